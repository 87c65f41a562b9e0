"""Resize in training graphs as matrix products (onnx_dc.train.resize): onnxruntime's Resize outputs, and a gradient.

onnxruntime-training 1.19 has no CPU kernel for ResizeGrad; every mode resizes each axis by a
fixed matrix, read off onnxruntime's own Resize. Each case compares the rewritten graph with the
op on random inputs, then fine-tuning through a linear Resize is checked against finite differences.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_step_is_the_gradient, finish_model, init, needs_training, run
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.train.equivalents import differentiable_equivalents

CASES = [  # (attributes, input shape, scales or None, sizes or None)
    ({"mode": "linear"}, [2, 3, 5, 7], [1, 1, 2, 2], None),  # half_pixel (the default), whole factors
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [2, 3, 5, 7], [1, 1, 1.5, 2.5], None),
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 2, 4, 4], [1, 1, 3, 3], None),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 2, 6, 5], None, [1, 2, 9, 1]),
    ({"mode": "cubic"}, [2, 2, 5, 6], [1, 1, 2, 2], None),
    ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, [1, 2, 7, 5], [1, 1, 1.7, 0.6], None),
    ({"mode": "linear", "antialias": 1}, [1, 2, 12, 10], [1, 1, 0.5, 0.4], None),  # down, antialiased
    ({"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
     [2, 2, 5, 5], [1, 1, 2.5, 2], None),
    ({"mode": "linear"}, [2, 3, 8, 6], [1, 1, 1, 2], None),  # width only
    ({"mode": "linear"}, [2, 3, 9], [1, 1, 1.5], None),  # 1-D
]


def resize_model(attrs: dict, shape: list[int], scales, sizes) -> onnx.ModelProto:
    inputs, inits = ["x", ""], []
    if scales is not None:
        inputs.append("scales")
        inits.append(init("scales", np.array(scales, np.float32)))
    else:
        inputs += ["", "sizes"]
        inits.append(init("sizes", np.array(sizes, np.int64)))
    g = oh.make_graph([oh.make_node("Resize", inputs, ["y"], name="up", **attrs)], "resize",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 19)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("attrs,shape,scales,sizes", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_resize_as_matmul_gives_the_op_outputs(attrs, shape, scales, sizes):
    model = resize_model(attrs, shape, scales, sizes)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert differentiable_equivalents(rewritten) == 1
    assert "Resize" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    want, got = run(model, {"x": x})[0], run(rewritten, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resize_with_unknown_lengths_stays():
    model = resize_model({"mode": "linear"}, [2, 3, 5, 7], [1, 1, 2, 2], None)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    assert differentiable_equivalents(model) == 0


def upsampling_classifier(seed: int = 0) -> onnx.ModelProto:
    """x [N, 1, 3, 4] -> Conv (w [2, 1, 1, 1]) -> linear Resize x1.5 (fractional) -> Flatten: logits [N, 2 * 4 * 6]."""
    rng = np.random.default_rng(seed)
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["h"], name="conv"),
                       oh.make_node("Resize", ["h", "", "scales"], ["u"], name="up", mode="linear"),
                       oh.make_node("Flatten", ["u"], ["y"], name="flat")], "up",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3, 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
                      [init("w", rng.normal(size=(2, 1, 1, 1)).astype(np.float32)),
                       init("scales", np.array([1, 1, 1.5, 1.5], np.float32))])
    return finish_model(g)


@needs_training
def test_fine_tuning_through_a_linear_resize_steps_by_its_gradient():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 1, 3, 4)).astype(np.float32)
    assert_step_is_the_gradient(upsampling_classifier(2), x, rng.integers(0, 48, 16).astype(np.int64), "w")
