"""End to end: compress models into *.dc.onnx and check them in onnxruntime."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MNIST_DIR, conv_model, fp16_model, mlp_model, run, shared_weight_model
from onnx import helper as oh

import onnx_dc
from onnx_dc.errors import ModelError
from onnx_dc.graph import layout
from onnx_dc.graph.io import write_model


def decoded_weights(dc: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weights onnxruntime rebuilds from a compressed model (decoder outputs as graph outputs)."""
    nodes = [n for n in dc.graph.node if n.domain == layout.DOMAIN]
    names = {i for n in nodes for i in n.input}
    g = oh.make_graph(nodes, "decoders", [], [oh.make_tensor_value_info(n.output[0], 1, None) for n in nodes],
                      [t for t in dc.graph.initializer if t.name in names])
    m = oh.make_model(g, opset_imports=dc.opset_import, functions=dc.functions)
    m.ir_version = 10
    return dict(zip([n.output[0] for n in nodes], run(m, {})))


def check_compressed(result: onnx_dc.CompressResult, feeds: dict, atol: float = 1e-5) -> None:
    """Invariants every compressed model must satisfy."""
    dc = result.model
    onnx.checker.check_model(dc, full_check=True)
    assert dc.ir_version <= 10
    assert all(op.version <= 21 for op in dc.opset_import if op.domain in ("", "ai.onnx"))
    rebuilt = decoded_weights(dc)
    for name, layer in result.state.layers.items():
        if name not in rebuilt:
            continue
        # bit for bit: what onnxruntime computes is codebook[codes] (or the kept values)
        np.testing.assert_array_equal(rebuilt[name], layer.weights)
        if layer.codebook is not None:
            np.testing.assert_array_equal(rebuilt[name], layer.codebook[layer.codes])
            assert np.unique(rebuilt[name][rebuilt[name] != 0]).size <= layer.entry.settings.class_num
        if layer.mask is not None:
            assert np.all(rebuilt[name][~layer.mask] == 0)
    reference = run(result.state.dense_model(), feeds)
    for got, want in zip(run(dc, feeds), reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


def test_mlp_prune_and_share():
    x = np.random.default_rng(0).normal(size=(7, 64)).astype(np.float32)
    result = onnx_dc.compress(mlp_model(), sparse_ratio=0.9, class_num=16)
    check_compressed(result, {"x": x})
    for row in result.layers:
        assert row.kept == pytest.approx(0.1 * row.weights, abs=1)
        assert row.form == "sparse" and row.class_num == 16
        # k-means may leave fewer than 16 clusters on a tiny layer; codes are as wide as the codebook needs
        assert row.code_bits == int(np.ceil(np.log2(row.codebook_bytes // 4))) <= 5
    assert result.layers[0].code_bits == 5
    ops = {n.op_type for n in result.model.graph.node if n.domain == layout.DOMAIN}
    assert {op.split("_")[0] for op in ops} == {layout.SPARSE}
    assert {f.name for f in result.model.functions} == ops


def test_quantize_only_uses_the_dense_form():
    result = onnx_dc.compress(mlp_model(), class_num=4)
    check_compressed(result, {"x": np.ones((2, 64), np.float32)})
    # unpruned: no reserved zero code, so 4 shared values take 2 bits
    assert {r.form for r in result.layers} == {"dense"} and {r.code_bits for r in result.layers} == {2}


def test_prune_only_keeps_float_values():
    result = onnx_dc.compress(mlp_model(), sparse_ratio=0.95, quantize_term=False)
    check_compressed(result, {"x": np.ones((2, 64), np.float32)})
    assert {r.form for r in result.layers} == {"sparse-f32"}


def test_conv_convtranspose_matmul_via_transpose_and_constant_weight():
    x = np.random.default_rng(1).normal(size=(3, 1, 4, 4)).astype(np.float32)
    cfg = {"defaults": {"class_num": 8}, "nodes": [{"match": "fc", "sparse_ratio": 0.8}]}
    result = onnx_dc.compress(conv_model(), config=cfg)
    check_compressed(result, {"x": x})
    assert {r.weight for r in result.layers} == {"conv_w", "deconv_w", "fc_wt"}


def test_shared_weight_compressed_once():
    result = onnx_dc.compress(shared_weight_model(), sparse_ratio=0.5, class_num=8)
    check_compressed(result, {"x": np.random.default_rng(2).normal(size=(4, 32)).astype(np.float32)})
    assert len(result.layers) == 1 and result.layers[0].nodes == "first,second"


def test_fp16_weight_is_skipped_with_a_reason():
    result = onnx_dc.compress(fp16_model(), class_num=4)
    assert [r.weight for r in result.layers] == ["wf"]
    assert any(s[2] == "wh" and "float16" in s[3] for s in result.report.skipped)


def test_fixed_index_bits_and_forms_are_obeyed_and_auto_is_smallest():
    auto = onnx_dc.compress(mlp_model(), sparse_ratio=0.9, class_num=16)
    for bits in (2, 4, 8):
        fixed = onnx_dc.compress(mlp_model(), sparse_ratio=0.9, class_num=16, index_bits=bits)
        assert {r.index_bits for r in fixed.layers} == {bits}
        assert fixed.report.totals()["compressed_bytes"] >= auto.report.totals()["compressed_bytes"]
    dense = onnx_dc.compress(mlp_model(), sparse_ratio=0.9, class_num=16, form="dense")
    assert {r.form for r in dense.layers} == {"dense"}
    check_compressed(dense, {"x": np.ones((1, 64), np.float32)})


def test_weights_that_would_grow_stay_float32():
    # 16 weights: codebook + codes + decoder cost more than 64 bytes of float32
    model = mlp_model(sizes=(2, 8, 2))
    result = onnx_dc.compress(model, class_num=256)
    assert any("not smaller than float32" in s[3] for s in result.report.skipped)


def test_decoders_fold_at_session_creation(tmp_path):
    result = onnx_dc.compress(mlp_model(), sparse_ratio=0.8, class_num=8)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(result.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    assert {n.op_type for n in optimized.graph.node} <= {"Gemm", "Relu", "FusedGemm"}


def test_same_input_same_bytes_input_untouched_atomic_output(tmp_path):
    src = tmp_path / "m.onnx"
    write_model(mlp_model(), src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    a, b = tmp_path / "a.dc.onnx", tmp_path / "b.dc.onnx"
    onnx_dc.compress(src, a, sparse_ratio=0.7, class_num=32)
    onnx_dc.compress(src, b, sparse_ratio=0.7, class_num=32)
    assert a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["a.dc.onnx", "b.dc.onnx", "m.onnx"]  # no temp files left
    with pytest.raises(ModelError, match="refusing to overwrite the input"):
        onnx_dc.compress(src, src, class_num=4)


def test_caller_model_is_not_mutated():
    model = conv_model()
    before = model.SerializeToString()
    onnx_dc.compress(model, sparse_ratio=0.5)
    assert model.SerializeToString() == before


def test_compressing_a_compressed_model_is_refused():
    dc = onnx_dc.compress(mlp_model(), class_num=4).model
    with pytest.raises(ModelError, match="already compressed"):
        onnx_dc.compress(dc)


def test_mnist8_reshaped_fc_weight_and_opset_upgrade(mnist8, tmp_path):
    x = np.random.default_rng(3).random((1, 1, 28, 28)).astype(np.float32)
    result = onnx_dc.compress(mnist8, tmp_path / "m.dc.onnx", sparse_ratio=0.5, class_num=32)
    check_compressed(result, {"Input3": x})
    rows = {r.weight: r for r in result.layers}
    assert set(rows) == {"Parameter5", "Parameter87", "Parameter193"}
    assert rows["Parameter193"].op_type == "MatMul" and rows["Parameter193"].shape == (16, 4, 4, 10)
    assert len(result.report.skipped) == 3  # the three bias Adds
    totals = result.report.totals()
    assert totals["file_bytes"] == (tmp_path / "m.dc.onnx").stat().st_size < 26454 / 2


def test_mnist8_accuracy_survives_quantization(mnist8, mnist_dir):
    dense = onnx_dc.evaluate(mnist8, f"mnist:{MNIST_DIR}")
    assert dense.correct == 9890  # the zoo model's documented 98.90%
    shared = onnx_dc.compress(mnist8, class_num=16)
    acc = onnx_dc.evaluate(shared.model, f"mnist:{MNIST_DIR}")
    assert acc.accuracy >= dense.accuracy - 0.005
