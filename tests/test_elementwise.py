"""Activations, reductions, normalizations and layout ops without a gradient in onnxruntime-training, trained
through their definitions (onnx_dc.train.elementwise): the op's outputs, and the gradient of the op itself.

Each case puts the op after a trained layer (MatMul or Conv, weight ``w``) and reads logits after it:
the rewritten graph must give the model's outputs to float tolerance, and one SGD step of
fine-tuning must move ``w`` by the finite-difference gradient of the unchanged model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_step_is_the_gradient, finish_model, init, needs_training, run
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.graph import ops
from onnx_dc.train.equivalents import differentiable_equivalents


# (op, attributes, kind, opset): vector [N, 8]; pair: op(h, Relu(h)); reduce: [N, 2, 4] over axis 2;
# positive: the same on Exp(h); image: [N, 4, 4, 4] from a 1x1 Conv, flattened after; GroupNormalization 18 is
# deprecated (onnx's checker refuses it) and left alone
CASES = [
    ("Elu", {"alpha": 0.7}, "vector", 17), ("Selu", {}, "vector", 17), ("Celu", {"alpha": 1.3}, "vector", 17),
    ("Softplus", {}, "vector", 17), ("Mish", {}, "vector", 18), ("Softsign", {}, "vector", 17),
    ("ThresholdedRelu", {"alpha": 0.4}, "vector", 17), ("Shrink", {"bias": 0.2, "lambd": 0.6}, "vector", 17),
    ("Sinh", {}, "vector", 17), ("Cosh", {}, "vector", 17), ("Tan", {}, "small", 17),
    ("Sum", {}, "pair", 17), ("Mean", {}, "pair", 17),
    ("ReduceSumSquare", {"axes": [2], "keepdims": 0}, "reduce", 17),
    ("ReduceL1", {"axes": [2], "keepdims": 0}, "reduce", 17),
    ("ReduceL1", {"keepdims": 0}, "reduce18", 18),
    ("ReduceLogSum", {"axes": [2], "keepdims": 0}, "positive", 17),
    ("LpNormalization", {"axis": 1, "p": 2}, "image", 17), ("LpNormalization", {"axis": -3, "p": 1}, "image", 17),
    ("InstanceNormalization", {"epsilon": 1e-4}, "image", 17),
    ("GroupNormalization", {"num_groups": 2}, "image", 21),
    ("GlobalMaxPool", {}, "image", 17), ("SpaceToDepth", {"blocksize": 2}, "image", 17),
    ("CumSum", {}, "image", 17), ("CumSum", {"exclusive": 1, "reverse": 1}, "image", 17),
    ("Transpose", {}, "image", 17),  # twice: the batch axis comes back first
    # Einsum on h [N, 2, 4] and a constant operand e (shape from the equation), or on h alone
    ("Einsum", {"equation": "bij,jk->bik"}, "einsum:4,3", 17), ("Einsum", {"equation": "bij,kj->bki"}, "einsum:3,4", 17),
    ("Einsum", {"equation": "bij,jk"}, "einsum:4,3", 17), ("Einsum", {"equation": "bij,jkl->blik"}, "einsum:4,2,3", 17),
    ("Einsum", {"equation": "bij->bji"}, "einsum", 17), ("Einsum", {"equation": "bij, j -> bi"}, "einsum:4", 17),
    ("Einsum", {"equation": "bij,jk->bk"}, "einsum:4,3", 17),
]


def op_model(op: str, attrs: dict, kind: str, opset: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = []
    if kind == "image":
        nodes = [oh.make_node("Conv", ["x", "w"], ["h"], name="layer")]
        inits.append(init("w", rng.normal(0, 1, (4, 1, 1, 1)).astype(np.float32)))
        x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    else:
        nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="layer")]
        inits.append(init("w", rng.normal(0, 0.4 if kind == "small" else 1, (6, 8)).astype(np.float32)))
        x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    inputs = ["h"]
    if kind == "pair":
        nodes.append(oh.make_node("Relu", ["h"], ["r"], name="relu"))
        inputs.append("r")
    if kind in ("reduce", "positive", "reduce18") or kind.startswith("einsum"):
        inits.append(init("split", np.array([0, 2, 4], np.int64)))
        source = "h"
        if kind == "positive":
            nodes.append(oh.make_node("Exp", ["h"], ["e"], name="exp"))
            source = "e"
        nodes.append(oh.make_node("Reshape", [source, "split"], ["h3"], name="split"))
        inputs = ["h3"]
        if kind == "reduce18":
            inits.append(init("axes", np.array([2], np.int64)))
            inputs.append("axes")
    if op in ("InstanceNormalization", "GroupNormalization"):
        width = 4 if op == "InstanceNormalization" or opset >= 21 else attrs["num_groups"]
        inits += [init("scale", rng.normal(1, .3, width).astype(np.float32)),
                  init("bias", rng.normal(0, .3, width).astype(np.float32))]
        inputs += ["scale", "bias"]
    if kind.startswith("einsum:"):
        inits.append(init("e", rng.normal(0, 1, [int(d) for d in kind[7:].split(",")]).astype(np.float32)))
        inputs.append("e")
    if op == "CumSum":
        inits.append(init("axis", np.array(2, np.int64)))
        inputs.append("axis")
    nodes.append(oh.make_node(op, inputs, ["o"], name="op", **attrs))
    if op == "Transpose":
        nodes.append(oh.make_node(op, ["o"], ["o2"], name="back"))
        nodes[-2].output[0], nodes[-1].input[0], nodes[-1].output[0] = "o1", "o1", "o"
    nodes.append(oh.make_node("Flatten", ["o"], ["y"], name="logits"))
    g = oh.make_graph(nodes, op, [x], [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])], inits)
    return finish_model(g, opset=opset)


def _input(kind: str, n: int, seed: int) -> np.ndarray:
    shape = (n, 1, 4, 4) if kind == "image" else (n, 6)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("op,attrs,kind,opset", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equivalent_gives_the_op_outputs(op, attrs, kind, opset):
    assert ops.spec(op).equivalent is not None
    model = op_model(op, attrs, kind, opset)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert differentiable_equivalents(rewritten) == (2 if op == "Transpose" else 1)
    if op == "Transpose":
        assert all("perm" in {a.name for a in n.attribute} for n in rewritten.graph.node if n.op_type == op)
    else:
        assert op not in {n.op_type for n in rewritten.graph.node}
    onnx.checker.check_model(rewritten)
    x = _input(kind, 16, 1)
    want = run(model, {"x": x})[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], want, rtol=2e-5, atol=2e-5)


@needs_training
@pytest.mark.parametrize("op,attrs,kind,opset", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fine_tuning_through_the_equivalent_steps_by_the_op_gradient(op, attrs, kind, opset):
    model = op_model(op, attrs, kind, opset, seed=2)
    x = _input(kind, 24, 3)
    classes = run(model, {"x": x[:1]})[0].shape[1]
    labels = np.random.default_rng(4).integers(0, classes, len(x)).astype(np.int64)
    assert_step_is_the_gradient(model, x, labels, "w", count=min(24, model.graph.initializer[0].dims[0] * 4))
