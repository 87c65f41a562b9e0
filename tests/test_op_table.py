"""The op table: every module asks it what an op is, so an op added to it alone is compressed end to end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

import onnx_dc
from onnx_dc.errors import ModelError
from onnx_dc.graph import ops
from onnx_dc.graph.layerview import _VIEWS
from onnx_dc.train.equivalents import REWRITES

DOMAIN = "example.layers"


def dense_function() -> onnx.FunctionProto:
    """A made-up op: ``Dense(X, W, B) = MatMul(X, W) + B``, as a model-local function onnxruntime inlines."""
    return oh.make_function(DOMAIN, "Dense", ["X", "W", "B"], ["Y"],
                            [oh.make_node("MatMul", ["X", "W"], ["XW"]), oh.make_node("Add", ["XW", "B"], ["Y"])],
                            opset_imports=[oh.make_opsetid("", 17)])


def dense_model(seed: int = 0) -> onnx.ModelProto:
    """x [batch, 24] -> Dense(24 -> 48) -> Relu -> Dense(48 -> 10)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (24, 48)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 48).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (48, 10)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "b2")]
    nodes = [oh.make_node("Dense", ["x", "w1", "b1"], ["h"], name="dense1", domain=DOMAIN),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("Dense", ["r", "w2", "b2"], ["y"], name="dense2", domain=DOMAIN)]
    graph = oh.make_graph(nodes, "dense", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 24])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(DOMAIN, 1)],
                          functions=[dense_function()])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def dense_op():
    """The made-up op entered in the table for one test: its weight is input 1, its bias input 2."""
    spec = ops.register(ops.OpSpec("Dense", domain=DOMAIN, weights=(1,), bias=2, view="matmul",
                                   trains_parameters=True))
    yield spec
    ops.unregister("Dense", DOMAIN)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_an_op_outside_the_table_is_not_compressed():
    with pytest.raises(ModelError, match="no compressible weights"):
        onnx_dc.compress(dense_model(), None, sparse_ratio=0.5, class_num=16)


def test_a_made_up_op_added_through_the_table_alone_is_compressed_and_runs(dense_op):
    model = dense_model()
    result = onnx_dc.compress(model, None, sparse_ratio=0.5, class_num=16)
    assert {row.weight for row in result.layers} == {"w1", "w2"}
    assert {row.op_type for row in result.layers} == {"Dense"}
    onnx.checker.check_model(result.model)
    for name in ("w1", "w2"):
        layer = result.state.layers[name]
        assert 0.45 <= 1 - layer.mask.mean() <= 0.55
        assert len(np.unique(layer.weights[layer.mask])) <= 16
    # the biases are the table's bias input: left float32 and named as biases
    assert {tensor for _, _, tensor, reason in result.report.skipped if reason.startswith("bias")} >= {"b1", "b2"}
    x = np.random.default_rng(1).normal(size=(64, 24)).astype(np.float32)
    assert _cosine(_run(result.model, x), _run(model, x)) > 0.9


def test_a_made_up_op_gets_a_matrix_view_and_the_data_aware_passes(dense_op, tmp_path):
    model = dense_model()
    x = np.random.default_rng(2).normal(size=(160, 24)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    free = onnx_dc.compress(model, None, sparse_ratio=0.7, class_num=8)
    aware = onnx_dc.compress(model, None, sparse_ratio=0.7, class_num=8, calib=f"npz:{tmp_path / 'calib.npz'}")
    done = aware.calib.result
    assert not done.without_stats, done.without_stats  # every weight had a view and statistics
    assert set(done.pruned_by_activation) == set(done.bias_corrected) == {"w1", "w2"}
    held_out = np.random.default_rng(3).normal(size=(256, 24)).astype(np.float32)
    reference = _run(model, held_out)
    assert _cosine(_run(aware.model, held_out), reference) > _cosine(_run(free.model, held_out), reference)


def test_the_config_accepts_by_op_type_of_a_registered_op(dense_op):
    result = onnx_dc.compress(dense_model(), None, config={"version": 1, "by_op_type": {"Dense": {"class_num": 4}}},
                              sparse_ratio=0.5)
    assert all(len(np.unique(layer.weights[layer.mask])) <= 4 for layer in result.state.layers.values())


def test_every_entry_names_a_view_and_an_equivalent_that_exist():
    for spec in ops.specs():
        if spec.compressible:
            assert spec.view is None or spec.view in _VIEWS, spec.op_type
            assert spec.bias is None or spec.bias not in spec.weights, spec.op_type
    for spec in ops.specs():
        assert spec.equivalent is None or spec.equivalent in REWRITES, spec.op_type
    with pytest.raises(ValueError, match="unknown view"):
        ops.register(ops.OpSpec("Bad", domain=DOMAIN, weights=(1,), view="not-a-view"))
    assert ops.spec("Bad", DOMAIN) is None


def test_standard_entries_answer_for_both_default_domain_spellings():
    node = oh.make_node("Conv", ["x", "w"], ["y"], domain="ai.onnx")
    assert ops.of(node) is ops.spec("Conv") and ops.of(node).bias == 2
    assert ops.of(oh.make_node("Conv", ["x", "w"], ["y"], domain="com.example")) is None
