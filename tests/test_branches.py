"""``If`` on the training path: the branch every sample takes is trained inlined (onnx_dc.train.branches).

Models: x [N, 4] -> MatMul (w) -> If, whose condition is computed from the input's shape
(the common case in exported models), from a fed constant, or from the data itself (samples
disagree). The inlined graph must give the model's outputs, fine-tuning must step by the
gradient of the unchanged model, and disagreeing samples must give one line naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SHARED_DATA, assert_step_is_the_gradient, finish_model, init, needs_training, run
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.api import prepare
from onnx_dc.data.calib import Samples
from onnx_dc.errors import ModelError
from onnx_dc.train.branches import inline_branches
from onnx_dc.train.forms import taken_on_path

SILERO = SHARED_DATA / "real" / "silero-vad" / "silero_vad_16k_op15.onnx"


def _branch(name: str, nodes: list[onnx.NodeProto], out: str, inits=()) -> onnx.GraphProto:
    return oh.make_graph(nodes, name, [], [oh.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(inits))


def if_model(condition: str = "shape", nested: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x [N, 4] -> MatMul w [4, 3] -> h; y = If(cond, then: Relu(h) * k (k an initializer of the branch),
    else: Sigmoid(h)). ``condition``: "shape" (x has 4 columns), "data" (sum of x > 0).
    ``nested``: the then-branch holds a second If on the same condition (then: Relu, else: Neg)."""
    rng = np.random.default_rng(seed)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="mm")]
    if condition == "shape":
        nodes += [oh.make_node("Shape", ["x"], ["shape"], name="shape"),
                  oh.make_node("Gather", ["shape", "one"], ["cols"], name="cols", axis=0),
                  oh.make_node("Equal", ["cols", "four"], ["cond"], name="cond")]
    else:
        nodes += [oh.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
                  oh.make_node("Greater", ["total", "zero"], ["cond"], name="cond")]
    if nested:
        inner = oh.make_node("If", ["cond"], ["act"], name="inner",
                             then_branch=_branch("in_then", [oh.make_node("Relu", ["h"], ["r"], name="relu")], "r"),
                             else_branch=_branch("in_else", [oh.make_node("Neg", ["h"], ["n"], name="neg")], "n"))
        then_nodes = [inner, oh.make_node("Mul", ["act", "k"], ["t"], name="scale")]
    else:
        then_nodes = [oh.make_node("Relu", ["h"], ["act"], name="relu"), oh.make_node("Mul", ["act", "k"], ["t"], name="scale")]
    then = _branch("then", then_nodes, "t", [init("k", np.float32(1.5))])
    other = _branch("else", [oh.make_node("Sigmoid", ["h"], ["s"], name="sigmoid")], "s")
    nodes.append(oh.make_node("If", ["cond"], ["y"], name="choose", then_branch=then, else_branch=other))
    g = oh.make_graph(nodes, "if", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                      [init("w", rng.normal(size=(4, 3)).astype(np.float32)), init("one", np.int64(1)),
                       init("four", np.int64(4)), init("zero", np.float32(0))])
    return finish_model(g)


def _batches(x: np.ndarray):
    return lambda size: ({"x": x[i:i + size]} for i in range(0, len(x), size))


@pytest.mark.parametrize("nested", [False, True])
def test_branch_every_sample_takes_is_inlined_and_gives_the_model_outputs(nested):
    model = if_model("shape", nested)
    x = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    state = prepare(model, class_num=256)
    taken = taken_on_path(state, _batches(x), [1, 4], "m")
    assert taken == ({"choose": True, "inner": True} if nested else {"choose": True})
    inlined = onnx.ModelProto()
    inlined.CopyFrom(model)
    assert inline_branches(inlined, taken) == len(taken)
    assert "If" not in {n.op_type for n in inlined.graph.node}
    onnx.checker.check_model(inlined)
    np.testing.assert_allclose(run(inlined, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6)


def test_samples_that_take_both_branches_are_named_in_one_line():
    model = if_model("data")
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    with pytest.raises(ModelError, match=r"^m: node choose \(If\) takes both branches on the calibration samples") as err:
        taken_on_path(prepare(model, class_num=256), _batches(x), [1], "m")
    assert "\n" not in str(err.value)
    positive = np.abs(x)  # every sum > 0: one branch
    assert taken_on_path(prepare(model, class_num=256), _batches(positive), [1, 8], "m") == {"choose": True}


@needs_training
@pytest.mark.parametrize("nested", [False, True])
def test_fine_tuning_through_an_if_steps_by_the_gradient_of_the_branch_taken(nested):
    model = if_model("shape", nested, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    assert_step_is_the_gradient(model, x, rng.integers(0, 3, 24).astype(np.int64), "w",
                                branches=taken_on_path(prepare(model, class_num=256), _batches(x), [1, 24], "m"))


@needs_training
def test_label_free_fine_tuning_of_silero_vad_goes_through_its_ifs(tmp_path):
    """silero-vad: three If nodes (sample rate, state) on the path from its convolutions."""
    from conftest import shared_path
    from onnx_dc.train.distill import DISTILL_DEFAULTS, distill
    from onnx_dc.train.settings import resolve_train_settings

    path = shared_path(SILERO)
    rng = np.random.default_rng(0)
    n = 12
    samples = Samples({"input": rng.normal(0, 0.1, (n, 1, 512)).astype(np.float32),
                       "state": np.zeros((n, 2, 1, 128), np.float32)}, constants={"sr": np.array(16000, np.int64)})
    state = prepare(str(path), sparse_ratio=0.5, class_num=32)
    assert taken_on_path(state, samples.batches, [1], "silero")  # at least one If decided
    result = distill(state, samples, resolve_train_settings(DISTILL_DEFAULTS, {"epochs": 1}), name="silero")
    assert result.skipped is None
    assert any(r.steps for r in result.records)
