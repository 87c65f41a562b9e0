"""The paper's two MNIST networks as ONNX, built with onnx.helper (the reference models of models/).

    LeNet-300-100: Flatten, fc 300, ReLU, fc 100, ReLU, fc 10, Softmax          (266K weights)
    LeNet-5:       Caffe's LeNet: conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2,
                   fc 500, ReLU, fc 10, Softmax                                 (431K weights)

Node names follow Caffe's prototxt (conv1, conv2, ip1, ...). Weights start He-normal
(std sqrt(2 / fan_in)) from a fixed seed, biases at zero. Input ``data`` is
``(batch, 1, 28, 28)`` with a free batch dimension, pixels / 255 (recorded in the metadata).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from onnx_dc.data.datasets import METADATA_KEY, Preprocess
from onnx_dc.passes.lower import set_metadata

PREPROCESS = Preprocess(scale=1.0 / 255.0)
OPSET = 17

def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)


def _finish(nodes, inits, name: str) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes, name, [oh.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [oh.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 10])], inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="onnx_dc")
    model.ir_version = 10
    set_metadata(model, {METADATA_KEY: PREPROCESS.to_metadata()})
    onnx.checker.check_model(model, full_check=True)
    return model


def _fc(nodes, inits, rng, name: str, x: str, n_in: int, n_out: int, relu: bool) -> str:
    inits += [numpy_helper.from_array(_he(rng, (n_out, n_in), n_in), f"{name}.weight"),
              numpy_helper.from_array(np.zeros(n_out, np.float32), f"{name}.bias")]
    nodes.append(oh.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [name], name=name, transB=1))
    if not relu:
        return name
    nodes.append(oh.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
    return f"{name}.relu"


def lenet_300_100(seed: int = 0) -> onnx.ModelProto:
    """LeNet-300-100 with He-normal initial weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [oh.make_node("Flatten", ["data"], ["flat"], name="flatten", axis=1)], []
    x = _fc(nodes, inits, rng, "ip1", "flat", 784, 300, True)
    x = _fc(nodes, inits, rng, "ip2", x, 300, 100, True)
    x = _fc(nodes, inits, rng, "ip3", x, 100, 10, False)
    nodes.append(oh.make_node("Softmax", [x], ["prob"], name="prob", axis=1))
    return _finish(nodes, inits, "lenet_300_100")


def lenet5(seed: int = 0) -> onnx.ModelProto:
    """Caffe's LeNet (the paper's LeNet-5) with He-normal initial weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "data"
    for name, c_in, c_out in (("conv1", 1, 20), ("conv2", 20, 50)):
        inits += [numpy_helper.from_array(_he(rng, (c_out, c_in, 5, 5), c_in * 25), f"{name}.weight"),
                  numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.bias")]
        nodes.append(oh.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                  kernel_shape=[5, 5]))
        pool = name.replace("conv", "pool")
        nodes.append(oh.make_node("MaxPool", [name], [pool], name=pool, kernel_shape=[2, 2], strides=[2, 2]))
        x = pool
    nodes.append(oh.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = _fc(nodes, inits, rng, "ip1", "flat", 800, 500, True)
    x = _fc(nodes, inits, rng, "ip2", x, 500, 10, False)
    nodes.append(oh.make_node("Softmax", [x], ["prob"], name="prob", axis=1))
    return _finish(nodes, inits, "lenet5")


BUILDERS = {"lenet_300_100": lenet_300_100, "lenet5": lenet5}
