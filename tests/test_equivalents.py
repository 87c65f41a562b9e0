"""Training-graph equivalents of ops onnxruntime-training has no gradient for: the op's outputs, and its gradient.

Each equivalent is named in the op table (``OpSpec.equivalent``); the rewrite must give the op's
outputs to float tolerance, and fine-tuning through it must step by the gradient of the op
itself, checked here against central finite differences of the unchanged model in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_step_is_the_gradient, finish_model, init, needs_training
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.graph import ops
from onnx_dc.train.equivalents import differentiable_equivalents

HARD = [("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {})]


def dense_then(op: str, attrs: dict, seed: int = 0) -> onnx.ModelProto:
    """x [N, 5] -> Gemm (w [6, 5], b) -> ``op`` -> y [N, 6]: logits for a labeled loss."""
    rng = np.random.default_rng(seed)
    g = oh.make_graph([oh.make_node("Gemm", ["x", "w", "b"], ["z"], name="fc", transB=1),
                       oh.make_node(op, ["z"], ["y"], name="act", **attrs)], "hard",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                      [init("w", rng.normal(0, 2, (6, 5)).astype(np.float32)),
                       init("b", rng.normal(0, 1, 6).astype(np.float32))])
    return finish_model(g)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("op,attrs", HARD)
def test_hard_activation_equivalent_gives_the_op_outputs(op, attrs):
    assert ops.spec(op).equivalent is not None
    model = dense_then(op, attrs)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert differentiable_equivalents(rewritten) == 1
    assert op not in [n.op_type for n in rewritten.graph.node]
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(1).normal(0, 2, (64, 5)).astype(np.float32)
    want = _run(model, x)
    assert 0 < (want == 0).mean() < 1 and ((want > 0) & (want < (1 if op == "HardSigmoid" else np.inf))).any()
    np.testing.assert_allclose(_run(rewritten, x), want, rtol=1e-6, atol=1e-6)


@needs_training
@pytest.mark.parametrize("op,attrs", HARD)
def test_fine_tuning_through_a_hard_activation_steps_by_its_gradient(op, attrs):
    """One SGD step through the rewritten graph moves w by lr x the finite-difference gradient of the original."""
    model = dense_then(op, attrs, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (32, 5)).astype(np.float32)
    assert_step_is_the_gradient(model, x, rng.integers(0, 6, 32).astype(np.int64), "w", count=30)


def layer_norm_model(seed: int = 0) -> onnx.ModelProto:
    """x [N, 6] -> MatMul (w [6, 8]) -> LayerNormalization (one output, as PyTorch exports it) -> y [N, 8]."""
    rng = np.random.default_rng(seed)
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["z"], name="fc"),
                       oh.make_node("LayerNormalization", ["z", "gamma", "beta"], ["y"], name="ln", axis=-1, epsilon=1e-5)],
                      "ln", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                      [init("w", rng.normal(0, 1, (6, 8)).astype(np.float32)),
                       init("gamma", rng.normal(1, .3, 8).astype(np.float32)),
                       init("beta", rng.normal(0, .3, 8).astype(np.float32))])
    return finish_model(g)


def test_layer_norm_equivalent_names_its_statistics_and_gives_the_op_outputs():
    model = layer_norm_model()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert differentiable_equivalents(rewritten) == 1
    (ln,) = [n for n in rewritten.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln.output) == 3 and all(ln.output) and ln.output[0] == "y"
    x = np.random.default_rng(1).normal(0, 2, (16, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-6, atol=1e-6)
    assert differentiable_equivalents(rewritten) == 0  # already has them


@needs_training
def test_fine_tuning_through_a_one_output_layer_norm_steps_by_its_gradient():
    """onnxruntime-training's LayerNormalization gradient reads Mean / InvStdDev: a PyTorch export has neither."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (32, 6)).astype(np.float32)
    assert_step_is_the_gradient(layer_norm_model(2), x, rng.integers(0, 8, 32).astype(np.int64), "w")


# The earlier rewrites, each after a 1x1 Conv (weight w) on x [N, 1, 3, 4] with 8 channels, flattened into logits.
IMAGE_OPS = [
    ("DepthToSpace", {"blocksize": 2}, []), ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, []),
    ("PRelu", {}, ["slope"]),
    ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     ["", "scales"]),
    ("BatchNormalization", {"epsilon": 1e-3}, ["bn_scale", "bn_b", "bn_mean", "bn_var"]),
    ("ConvTranspose", {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, ["wt"]),
]


def image_then(op: str, attrs: dict, extra: list[str], seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [init("w", rng.normal(size=(8, 1, 1, 1)).astype(np.float32)),
             init("slope", rng.normal(size=(8, 1, 1)).astype(np.float32)),
             init("scales", np.array([1, 1, 2, 2], np.float32)),
             init("wt", rng.normal(0, .5, (8, 2, 3, 3)).astype(np.float32)),
             *(init(f"bn_{k}", rng.uniform(0.5, 1.5, 8).astype(np.float32)) for k in ("scale", "b", "mean", "var"))]
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["h"], name="conv"),
                       oh.make_node(op, ["h", *extra], ["o"], name="op", **attrs),
                       oh.make_node("Flatten", ["o"], ["y"], name="logits")], op,
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3, 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])],
                      [t for t in inits if t.name in ("w", *extra)])
    return finish_model(g)


@needs_training
@pytest.mark.parametrize("op,attrs,extra", IMAGE_OPS, ids=[f"{c[0]}-{i}" for i, c in enumerate(IMAGE_OPS)])
def test_fine_tuning_through_the_earlier_equivalents_steps_by_the_op_gradient(op, attrs, extra):
    model = image_then(op, attrs, extra, seed=1)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert differentiable_equivalents(rewritten) == 1
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 1, 3, 4)).astype(np.float32)
    classes = _run(model, x[:1]).shape[1]
    assert_step_is_the_gradient(model, x, rng.integers(0, classes, 16).astype(np.int64), "w", count=8)
