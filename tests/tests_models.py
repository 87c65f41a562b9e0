"""Small model files for CLI tests of calibration data."""

from __future__ import annotations

import numpy as np
from conftest import finish_model, init
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.graph.io import write_model


def image_model_file(folder, shape=("N", 3, 24, 32)):
    """Conv + Relu + Conv over an RGB image input named ``img``; written to ``folder/img.onnx``."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Conv", ["img", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    g = oh.make_graph(nodes, "img", [oh.make_tensor_value_info("img", TensorProto.FLOAT, list(shape))],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                      [init("w1", rng.normal(0, 0.3, (8, shape[1], 3, 3)).astype(np.float32)),
                       init("w2", rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32))])
    path = folder / "img.onnx"
    write_model(finish_model(g), path)
    return path
