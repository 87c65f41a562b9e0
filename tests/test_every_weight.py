"""Every weight onnxruntime runs: unsorted graphs, subgraphs, recurrent ops, embeddings, quantized models.

Each model is compressed, then the ``.dc.onnx`` is run in onnxruntime against the
original graph holding the compressed weights (``state.dense_model()``): the decoders must
rebuild exactly those weights, wherever they are read.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh

from conftest import SHARED_DATA, finish_model, init, mlp_model, shared_path
from onnx_dc import compress
from onnx_dc.errors import ModelError
from onnx_dc.graph.walk import is_sorted

F = TensorProto.FLOAT


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same_as_dense(result, feeds: dict) -> None:
    """The compressed model computes what the original graph computes with the compressed weights."""
    onnx.checker.check_model(result.model)
    want = run(result.state.dense_model(), feeds)
    got = run(result.model, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def compressed(result) -> set[str]:
    return {r.weight for r in result.layers}


def skipped(result) -> dict[str, str]:
    return {tensor: reason for _, _, tensor, reason in result.report.skipped}


def test_unsorted_graph_is_sorted_and_compressed():
    model = mlp_model(seed=1)
    nodes = list(model.graph.node)[::-1]  # reverse topological order, as a keras2onnx export stores it
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert not is_sorted(model.graph)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    result = compress(model, sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"w0", "w1"}
    assert is_sorted(result.model.graph)
    assert_same_as_dense(result, {"x": np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)})


def test_unsorted_model_file_is_sorted_then_checked_and_input_left_alone(tmp_path):
    model = mlp_model(seed=2)
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "unsorted.onnx"
    path.write_bytes(model.SerializeToString())
    before = path.read_bytes()
    result = compress(path, tmp_path / "out.dc.onnx", sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"w0", "w1"} and path.read_bytes() == before
    assert_same_as_dense(result, {"x": np.ones((2, 64), np.float32)})
    # a graph that sorting cannot fix is still refused, in one line naming the file
    model.graph.node[0].input[0] = "nowhere"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"unsorted.onnx: not a valid ONNX model"):
        compress(path, sparse_ratio=0.5)


def _branch(name: str, weight: str, act: str) -> onnx.GraphProto:
    nodes = [oh.make_node("MatMul", ["x", weight], [f"{name}_h"], name=f"{name}_mm"),
             oh.make_node(act, [f"{name}_h"], [f"{name}_y"], name=f"{name}_act")]
    return oh.make_graph(nodes, name, [], [oh.make_tensor_value_info(f"{name}_y", F, ["N", 16])])


def if_model() -> onnx.ModelProto:
    """If whose branches read one main-graph weight (outer scope), like silero-vad's LSTMs."""
    rng = np.random.default_rng(2)
    nodes = [oh.make_node("If", ["cond"], ["y"], name="branch",
                          then_branch=_branch("then", "w", "Relu"), else_branch=_branch("else", "w", "Sigmoid"))]
    graph = oh.make_graph(nodes, "if", [oh.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                        oh.make_tensor_value_info("x", F, ["N", 32])],
                          [oh.make_tensor_value_info("y", F, ["N", 16])],
                          [init("w", rng.normal(size=(32, 16)).astype(np.float32))])
    return finish_model(graph)


@pytest.mark.parametrize("cond", [True, False])
def test_weight_read_inside_if_branches_is_compressed(cond):
    result = compress(if_model(), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"w"}
    assert set(result.layers[0].nodes.split(",")) == {"then_mm", "else_mm"}
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    assert_same_as_dense(result, {"cond": np.array(cond), "x": x})


def loop_model() -> onnx.ModelProto:
    """Loop whose body holds its own weight initializer (and a weight in a Constant node)."""
    rng = np.random.default_rng(3)
    w_body = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    w_const = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    body = oh.make_graph(
        [oh.make_node("Constant", [], ["wc"], value=onnx.numpy_helper.from_array(w_const, "wc")),
         oh.make_node("MatMul", ["h_in", "wb"], ["h1"], name="body_mm"),
         oh.make_node("MatMul", ["h1", "wc"], ["h2"], name="body_mm2"),
         oh.make_node("Tanh", ["h2"], ["h_out"], name="body_tanh"),
         oh.make_node("Identity", ["c_in"], ["c_out"], name="body_cond")],
        "body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []), oh.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         oh.make_tensor_value_info("h_in", F, ["N", 16])],
        [oh.make_tensor_value_info("c_out", TensorProto.BOOL, []), oh.make_tensor_value_info("h_out", F, ["N", 16])],
        [init("wb", w_body)])
    nodes = [oh.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)]
    graph = oh.make_graph(nodes, "loop", [oh.make_tensor_value_info("x", F, ["N", 16])],
                          [oh.make_tensor_value_info("y", F, ["N", 16])], [init("trips", np.array(3, np.int64))])
    return finish_model(graph)


def test_weights_held_inside_a_loop_body_are_compressed():
    result = compress(loop_model(), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"wb", "wc"}
    body = result.model.graph.node[-1].attribute[0].g
    assert not body.initializer, "the body's weights moved to the main graph and are decoded there"
    assert_same_as_dense(result, {"x": np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)})


def test_hoisted_weight_whose_name_is_taken_is_renamed():
    model = loop_model()
    model.graph.initializer.append(init("wb", np.ones((2, 2), np.float32)))  # an unrelated main-graph tensor
    model.graph.node.append(oh.make_node("Identity", ["wb"], ["wb_out"], name="keep"))
    model.graph.output.append(oh.make_tensor_value_info("wb_out", F, [2, 2]))
    onnx.checker.check_model(model)
    result = compress(model, sparse_ratio=0.5, class_num=8)
    assert "wb__1" in compressed(result)
    assert_same_as_dense(result, {"x": np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)})


RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_weights_w_and_r_are_compressed_and_bias_stays(op):
    rng = np.random.default_rng(4)
    gates, hidden, size = RNN_GATES[op], 8, 12
    inits = [init("W", rng.normal(0, 0.3, (1, gates * hidden, size)).astype(np.float32)),
             init("R", rng.normal(0, 0.3, (1, gates * hidden, hidden)).astype(np.float32)),
             init("B", rng.normal(0, 0.1, (1, 2 * gates * hidden)).astype(np.float32))]
    nodes = [oh.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], name="rnn", hidden_size=hidden)]
    graph = oh.make_graph(nodes, "rnn", [oh.make_tensor_value_info("x", F, [5, 2, size])],
                          [oh.make_tensor_value_info("Y", F, [5, 1, 2, hidden]),
                           oh.make_tensor_value_info("Y_h", F, [1, 2, hidden])], inits)
    result = compress(finish_model(graph), sparse_ratio=0.5, class_num=16)
    assert compressed(result) == {"W", "R"}
    assert skipped(result)["B"] == "bias (biases stay float32)"
    assert_same_as_dense(result, {"x": rng.normal(size=(5, 2, size)).astype(np.float32)})


def gather_model(constant_indices: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [init("table", rng.normal(size=(50, 16)).astype(np.float32)),
             init("w", rng.normal(size=(16, 4)).astype(np.float32))]
    inputs = [oh.make_tensor_value_info("x", F, ["N", 16])]
    if constant_indices:
        inits.append(init("ids", np.array([1, 3, 5], np.int64)))
    else:
        inputs.append(oh.make_tensor_value_info("ids", TensorProto.INT64, ["T"]))
    nodes = [oh.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
             oh.make_node("MatMul", ["emb", "w"], ["y"], name="fc"),
             oh.make_node("MatMul", ["x", "w"], ["z"], name="fc2")]
    graph = oh.make_graph(nodes, "emb", inputs, [oh.make_tensor_value_info("y", F, ["T", 4]),
                                                 oh.make_tensor_value_info("z", F, ["N", 4])], inits)
    return finish_model(graph)


def test_gather_embedding_table_is_compressed():
    result = compress(gather_model(constant_indices=False), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"table", "w"}
    feeds = {"ids": np.array([0, 7, 49, 7], np.int64), "x": np.ones((2, 16), np.float32)}
    assert_same_as_dense(result, feeds)


def test_gather_with_constant_indices_is_not_an_embedding():
    result = compress(gather_model(constant_indices=True), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"w"}
    assert "not an embedding lookup" in skipped(result)["table"]


def test_matmul_with_the_weight_as_first_input():
    w = np.random.default_rng(6).normal(size=(8, 16)).astype(np.float32)
    graph = oh.make_graph([oh.make_node("MatMul", ["w", "x"], ["y"], name="mm")], "wfirst",
                          [oh.make_tensor_value_info("x", F, [16, "N"])], [oh.make_tensor_value_info("y", F, [8, "N"])],
                          [init("w", w)])
    result = compress(finish_model(graph), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"w"}
    assert result.state.plan.entries[0].site.consumers[0].input_index == 0
    assert_same_as_dense(result, {"x": np.ones((16, 3), np.float32)})


def quantized_model(with_float_layer: bool) -> onnx.ModelProto:
    """MatMulInteger with an int8 weight (as onnxruntime's dynamic quantization writes), plus a float Gemm."""
    rng = np.random.default_rng(7)
    inits = [init("wq", rng.integers(-127, 127, (16, 8)).astype(np.int8)), init("zp", np.array(0, np.int8))]
    nodes = [oh.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
             oh.make_node("MatMulInteger", ["xq", "wq", "xz", "zp"], ["acc"], name="mmi"),
             oh.make_node("Cast", ["acc"], ["accf"], name="cast", to=F),
             oh.make_node("Mul", ["accf", "xs"], ["h"], name="scale")]
    out = "h"
    if with_float_layer:
        inits.append(init("wf", rng.normal(size=(4, 8)).astype(np.float32)))
        nodes.append(oh.make_node("Gemm", ["h", "wf"], ["y"], name="fc", transB=1))
        out = "y"
    graph = oh.make_graph(nodes, "quant", [oh.make_tensor_value_info("x", F, ["N", 16])],
                          [oh.make_tensor_value_info(out, F, ["N", 4 if with_float_layer else 8])], inits)
    return finish_model(graph, opset=17)


def test_quantized_model_gets_one_line_and_its_float_weights_are_compressed():
    result = compress(quantized_model(with_float_layer=True), sparse_ratio=0.5, class_num=8)
    assert compressed(result) == {"wf"}
    assert result.report.notes == ("already quantized: MatMulInteger (1 integer weights) stay as they are; "
                                   "float weights are compressed",)
    assert "already-quantized" in skipped(result)["wq"]
    table = result.report.to_table()
    assert table.count("already quantized") == 1
    assert_same_as_dense(result, {"x": np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)})


def test_quantized_model_without_float_weights_says_so_in_one_line():
    with pytest.raises(ModelError) as err:
        compress(quantized_model(with_float_layer=False), sparse_ratio=0.5, class_num=8)
    message = str(err.value)
    assert "already quantized: MatMulInteger" in message and "no float weight" in message
    assert "\n" not in message


# Real models: their README lists the ops; a missing file fails in CI and skips elsewhere.
REAL = SHARED_DATA / "real"


def real_model(relative: str) -> onnx.ModelProto:
    return onnx.load(str(shared_path(REAL / relative)))


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        if t.elem_type == TensorProto.INT64:
            out[value.name] = np.array(16000, np.int64).reshape(shape)  # silero-vad's sample rate
        else:
            out[value.name] = rng.normal(0, 0.1, shape).astype(np.float32)
    return out


@pytest.mark.parametrize("relative, ops", [
    ("dtln/model_1.onnx", {"LSTM", "MatMul"}),
    ("gtcrn/gtcrn_simple.onnx", {"GRU", "Conv", "ConvTranspose", "MatMul"}),
])
def test_real_recurrent_models_compress_and_run(relative, ops):
    model = real_model(relative)
    result = compress(model, sparse_ratio=0.5, class_num=32)
    assert {op for r in result.layers for op in r.op_type.split(",")} == ops
    assert_same_as_dense(result, feeds_for(model))


def test_real_dtln_in_reverse_node_order():
    model = real_model("dtln/model_1.onnx")
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    result = compress(model, sparse_ratio=0.5, class_num=32)
    assert {r.op_type for r in result.layers} == {"LSTM", "MatMul"}
    assert_same_as_dense(result, feeds_for(model))


def test_real_silero_vad_lstm_inside_if_is_compressed():
    model = real_model("silero-vad/silero_vad_16k_op15.onnx")
    result = compress(model, sparse_ratio=0.5, class_num=32)
    assert {"model.decoder.rnn.weight_ih", "model.decoder.rnn.weight_hh"} <= compressed(result)
    lstm_rows = [r for r in result.layers if r.weight.startswith("model.decoder.rnn.weight")]
    assert all(r.op_type == "LSTM" for r in lstm_rows)
    for bias in ("model.decoder.rnn.bias_ih", "model.decoder.rnn.bias_hh"):  # B = Concat(slices of both)
        assert skipped(result)[bias] == "bias (biases stay float32)"
    feeds = {"input": np.random.default_rng(0).normal(0, 0.1, (1, 576)).astype(np.float32),
             "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    assert_same_as_dense(result, feeds)


@pytest.mark.parametrize("relative", ["ultraface/version-RFB-320.onnx", "ultraface/version-slim-320.onnx"])
def test_real_ultraface_weights_listed_as_inputs_are_compressed(relative):
    """IR 4 export listing every initializer as a graph input too: onnxruntime runs it, so onnx_dc compresses it."""
    model = real_model(relative)
    inits = {t.name for t in model.graph.initializer}
    assert sum(i.name in inits for i in model.graph.input) > 100
    result = compress(model, sparse_ratio=0.5, class_num=32)
    assert sum(r.op_type == "Conv" for r in result.layers) >= 40
    assert not {i.name for i in result.model.graph.input} & inits  # only the image is an input now
    assert [i.name for i in result.model.graph.input] == ["input"]
    assert any("listed as graph inputs" in note for note in result.report.notes)
    # the SSD priors (Constant nodes, not learned) are left as they are
    assert all(r.weights != 4420 * 2 for r in result.layers)
    feeds = {"input": np.random.default_rng(0).normal(0, 0.5, (1, 3, 240, 320)).astype(np.float32)}
    assert_same_as_dense(result, feeds)
