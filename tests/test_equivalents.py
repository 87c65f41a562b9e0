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
from conftest import finish_model, init
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.api import prepare
from onnx_dc.graph import ops
from onnx_dc.train.equivalents import differentiable_equivalents
from onnx_dc.train.ort_training import training_available

needs_training = pytest.mark.skipif(not training_available(), reason="onnxruntime-training is not installed")
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


def _cross_entropy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    z = _run(model, x).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


@needs_training
@pytest.mark.parametrize("op,attrs", HARD)
def test_fine_tuning_through_a_hard_activation_steps_by_its_gradient(op, attrs):
    """One SGD step through the rewritten graph moves w by lr x the finite-difference gradient of the original."""
    from onnx_dc.train.forms import TrainForm
    from onnx_dc.train.loop import Trainer
    from onnx_dc.train.optim import Optimizer
    from onnx_dc.train.settings import OptimizerKind, StageSettings

    model = dense_then(op, attrs, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (32, 5)).astype(np.float32)
    labels = rng.integers(0, 6, 32).astype(np.int64)
    w0 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w")).astype(np.float64)
    numeric = np.zeros_like(w0)
    eps = 1e-3
    for i in np.ndindex(w0.shape):
        losses = []
        for sign in (1, -1):
            w = w0.copy()
            w[i] += sign * eps
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            for t in probe.graph.initializer:
                if t.name == "w":
                    t.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), "w"))
            losses.append(_cross_entropy(probe, x, labels))
        numeric[i] = (losses[0] - losses[1]) / (2 * eps)
    state = prepare(model, class_num=256)  # planned, no pass run: the weights are the original ones
    trainer = Trainer(state, TrainForm.DENSE, name=op)
    try:
        lr = 0.1
        before = trainer.values["w"].copy()
        trainer.step(x, labels, Optimizer(StageSettings(lr=lr, momentum=0.0, optimizer=OptimizerKind.SGD), 1))
        moved = (before - trainer.values["w"]) / lr
    finally:
        trainer.close()
    assert np.abs(numeric).max() > 1e-3  # the activation passes gradient here
    np.testing.assert_allclose(moved, numeric, rtol=2e-2, atol=2e-3)
