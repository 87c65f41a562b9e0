"""LSTM / GRU / RNN unrolled for training (onnx_dc.train.recurrent): onnxruntime's own op's outputs, and a gradient.

Each case builds one recurrent node with random parameters, runs it in onnxruntime, and runs
the unrolled graph on the same inputs: every output (Y, Y_h, Y_c) must match to float tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_step_is_the_gradient, finish_model, init, needs_training, run
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.train.equivalents import differentiable_equivalents
from onnx_dc.train.recurrent import MAX_STEPS, unrolled

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
CASES = [
    ("LSTM", {}, dict(bias=True)),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Tanh"]}, dict(bias=True, h0=True, c0=True)),  # DTLN spells them out
    ("LSTM", {"direction": "reverse", "input_forget": 1}, dict(bias=True, h0=True)),
    ("LSTM", {"direction": "bidirectional", "clip": 0.7}, dict(bias=True, h0=True, c0=True, peepholes=True)),
    ("LSTM", {"activations": ["HardSigmoid", "Relu", "Tanh"], "activation_alpha": [0.3], "activation_beta": [0.4]},
     dict(bias=True)),
    ("GRU", {}, dict(bias=True)),
    ("GRU", {"linear_before_reset": 1}, dict(bias=True, h0=True)),
    ("GRU", {"linear_before_reset": 1}, dict(bias=True)),
    ("GRU", {"direction": "bidirectional", "activations": ["Sigmoid", "Tanh", "HardSigmoid", "LeakyRelu"],
             "activation_alpha": [0.2, 0.1], "activation_beta": [0.5]}, dict(bias=True, h0=True)),
    ("GRU", {"direction": "reverse", "clip": 1.5}, dict()),
    ("RNN", {}, dict(bias=True, h0=True)),
    ("RNN", {"direction": "bidirectional", "activations": ["Relu", "ScaledTanh"], "activation_alpha": [0.5, 0.9],
             "activation_beta": [0.7, 1.1]}, dict(bias=True)),
]


def recurrent_model(op: str, attrs: dict, bias=False, h0=False, c0=False, peepholes=False, steps=5, batch=3,
                    width=4, hidden=6, seed=0) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(seed)
    g = GATES[op]
    d = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    inits = [init("W", rng.normal(0, .5, (d, g * hidden, width)).astype(np.float32)),
             init("R", rng.normal(0, .5, (d, g * hidden, hidden)).astype(np.float32))]
    names = ["x", "W", "R", "", "", "", "", ""]
    state_shape = (batch, d, hidden) if layout else (d, batch, hidden)
    for slot, flag, name, shape in ((3, bias, "B", (d, 2 * g * hidden)), (5, h0, "h0", state_shape),
                                    (6, c0, "c0", state_shape), (7, peepholes, "P", (d, 3 * hidden))):
        if flag:
            inits.append(init(name, rng.normal(0, .5, shape).astype(np.float32)))
            names[slot] = name
    while not names[-1]:
        names.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = oh.make_node(op, names, outputs, name="rnn", hidden_size=hidden, **attrs)
    x_shape = [batch, steps, width] if layout else [steps, batch, width]
    graph = oh.make_graph([node], "rnn", [oh.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14 if layout else 11)])
    model.ir_version = 10
    return model, {"x": rng.normal(0, 1, x_shape).astype(np.float32)}


def unroll(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its one recurrent node unrolled."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    x = out.graph.input[0]
    nodes = unrolled(out.graph.node[0], {x.name: [d.dim_value for d in x.type.tensor_type.shape.dim]})
    assert nodes is not None
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@pytest.mark.parametrize("op,attrs,inputs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_unrolled_recurrent_op_gives_the_op_outputs(op, attrs, inputs):
    model, feed = recurrent_model(op, attrs, **inputs)
    rewritten = unroll(model)
    assert op not in {n.op_type for n in rewritten.graph.node}
    for name, want, got in zip(["Y", "Y_h", "Y_c"], run(model, feed), run(rewritten, feed)):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("op,attrs,kept", [("LSTM", {}, set()), ("RNN", {}, set()),
                                           ("GRU", {}, {"GRU"}), ("GRU", {"direction": "bidirectional"}, {"GRU"}),
                                           ("GRU", {"no_initial_state": True}, set()),
                                           ("GRU", {"clip": 2.0}, set()), ("GRU", {"activations": ["Sigmoid", "Tanh"]}, set())])
def test_training_graph_unrolls_what_onnxruntime_training_cannot_train(op, attrs, kept):
    """GRUs onnxruntime-training trains stay GRUs (forward ones; a bidirectional one as two), the rest unroll:
    its GRUGrad fails without an initial state."""
    h0 = not attrs.pop("no_initial_state", False)
    model, feed = recurrent_model(op, attrs, bias=True, h0=h0, c0=h0 and op == "LSTM")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    differentiable_equivalents(rewritten)
    assert {n.op_type for n in rewritten.graph.node} & {"LSTM", "GRU", "RNN"} == kept
    assert all(oh.get_attribute_value(a) == b"forward" for n in rewritten.graph.node for a in n.attribute
               if a.name == "direction")
    for want, got in zip(run(model, feed), run(rewritten, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_recurrent_ops_that_cannot_be_unrolled_stay_as_they_are():
    model, _ = recurrent_model("LSTM", {})
    node = model.graph.node[0]
    shapes = {"x": [5, 3, 4]}
    assert unrolled(node, shapes) is not None
    assert unrolled(node, {"x": [-1, 3, 4]}) is None  # sequence length not known
    assert unrolled(node, {"x": [MAX_STEPS + 1, 3, 4]}) is None
    odd = oh.make_node("LSTM", ["x", "W", "R"], ["Y"], name="odd", hidden_size=6, activations=["Softsign", "Tanh", "Tanh"])
    assert unrolled(odd, shapes) is None
    with_lens = oh.make_node("GRU", ["x", "W", "R", "", "lens"], ["Y"], name="lens", hidden_size=6)
    assert unrolled(with_lens, shapes) is None


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_unrolled_batch_first_layout_matches_the_time_first_op(op):
    """layout 1 ([batch, steps, ...]; onnxruntime's CPU kernels refuse it) against the same op in layout 0."""
    first, feed = recurrent_model(op, {"layout": 1}, bias=True, h0=True, c0=op == "LSTM")
    time_major, _ = recurrent_model(op, {}, bias=True, h0=True, c0=op == "LSTM")
    states = {t.name: onnx.numpy_helper.to_array(t) for t in first.graph.initializer}
    for t in time_major.graph.initializer:  # same parameters; initial states [batch, D, H] -> [D, batch, H]
        value = states[t.name].transpose(1, 0, 2) if t.name in ("h0", "c0") else states[t.name]
        t.CopyFrom(init(t.name, value))
    first = unroll(first)
    wants = run(time_major, {"x": feed["x"].transpose(1, 0, 2)})
    gots = run(first, feed)
    np.testing.assert_allclose(gots[0], wants[0].transpose(2, 0, 1, 3), rtol=1e-5, atol=2e-6)
    for want, got in zip(wants[1:], gots[1:]):
        np.testing.assert_allclose(got, want.transpose(1, 0, 2), rtol=1e-5, atol=2e-6)


def classifier(op: str, attrs: dict, steps: int = 4, width: int = 3, hidden: int = 5, seed: int = 0,
               read: str = "Y_h", batch: int = 16) -> onnx.ModelProto:
    """x [N, steps, width] -> Transpose -> ``op`` -> Y_h [D, N, H] (or Y [T, D, N, H]) -> logits [N, ...];
    a GRU gets an initial state (of ``batch`` rows: its GRUGrad needs one)."""
    cell, _ = recurrent_model(op, attrs, bias=True, steps=steps, width=width, hidden=hidden, seed=seed,
                              h0=op == "GRU", batch=batch)
    rnn = cell.graph.node[0]
    rnn.input[0] = "xt"
    del rnn.output[:]
    rnn.output.extend(["", "h"] if read == "Y_h" else ["h"])
    g = oh.make_graph([oh.make_node("Transpose", ["x"], ["xt"], name="time_first", perm=[1, 0, 2]), rnn,
                       oh.make_node("Transpose", ["h"], ["hb"], name="batch_first",
                                    perm=[1, 0, 2] if read == "Y_h" else [2, 0, 1, 3]),
                       oh.make_node("Flatten", ["hb"], ["y"], name="logits")], "classifier",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, width])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])], list(cell.graph.initializer))
    return finish_model(g, opset=11)


@needs_training
@pytest.mark.parametrize("op,attrs", [("LSTM", {"activations": ["Sigmoid", "Tanh", "Tanh"]}),
                                      ("LSTM", {"direction": "bidirectional", "input_forget": 1}),
                                      ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}),
                                      ("GRU", {"direction": "bidirectional", "clip": 5.0}),  # clip: unrolled
                                      ("RNN", {"activations": ["Relu"]})])
def test_fine_tuning_through_an_unrolled_recurrent_op_steps_by_its_gradient(op, attrs):
    """The LSTM with its default activations spelled out (as DTLN's): onnxruntime-training's own LSTMGrad refuses it."""
    model = classifier(op, attrs)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (16, 4, 3)).astype(np.float32)
    classes = 5 * (2 if attrs.get("direction") == "bidirectional" else 1)
    assert_step_is_the_gradient(model, x, rng.integers(0, classes, 16).astype(np.int64), "W")


@needs_training
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_fine_tuning_through_a_gru_onnxruntime_trains_steps_by_its_gradient(direction):
    """A GRU whose Y is read stays a GRU (a bidirectional one as two forward ones) and trains by its own gradient."""
    model = classifier("GRU", {"direction": direction, "linear_before_reset": 1}, read="Y")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    differentiable_equivalents(rewritten)
    assert "GRU" in {n.op_type for n in rewritten.graph.node}
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (16, 4, 3)).astype(np.float32)
    classes = 4 * 5 * (2 if direction == "bidirectional" else 1)
    assert_step_is_the_gradient(model, x, rng.integers(0, classes, 16).astype(np.int64), "W")
