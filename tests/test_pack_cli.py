"""pack / unpack / report / eval / InferenceSession on .dcz files, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import mlp_model

import onnx_dc
from onnx_dc.cli import main
from onnx_dc.graph.io import write_model


def test_pack_unpack_report_eval_on_mnist8(tmp_path, capsys, mnist8, mnist_dir):
    dc, dcz, back = tmp_path / "m.dc.onnx", tmp_path / "m.dcz", tmp_path / "back.dc.onnx"
    onnx_dc.compress(mnist8, dc, sparse_ratio=0.5, class_num=32)
    assert main(["pack", str(dc), "-o", str(dcz), "--codec", "huffman"]) == 0
    assert main(["unpack", str(dcz), "-o", str(back)]) == 0
    assert back.read_bytes() == dc.read_bytes()
    assert dcz.stat().st_size < dc.stat().st_size
    capsys.readouterr()
    assert main(["report", str(dcz), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for row in rep["layers"]:
        assert row["weight_bits_pq"] == row["code_bits"] and row["index_bits_pq"] == row["index_bits"]
        assert row["coded_total_bytes"] <= row["total_bytes"]
        assert row["weight_bits_pqh"] <= row["code_bits"]
    assert rep["totals"]["file_bytes"] == dcz.stat().st_size
    assert rep["totals"]["layers_ratio_coded"] >= rep["totals"]["layers_ratio"]
    a = onnx_dc.evaluate(dc, f"mnist:{mnist_dir}", limit=1000)
    b = onnx_dc.evaluate(dcz, f"mnist:{mnist_dir}", limit=1000)
    assert a.n == b.n == 1000 and a.correct == b.correct


def test_inference_session_on_dcz(tmp_path):
    dc, dcz = tmp_path / "m.dc.onnx", tmp_path / "m.dcz"
    result = onnx_dc.compress(mlp_model(), dc, sparse_ratio=0.8, class_num=16)
    onnx_dc.pack(dc, dcz)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    got = onnx_dc.InferenceSession(dcz).run(None, {"x": x})[0]
    want = onnx_dc.InferenceSession(result.model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_inference_session_takes_onnxruntimes_options_and_providers(tmp_path):
    dc, dcz = tmp_path / "m.dc.onnx", tmp_path / "m.dcz"
    result = onnx_dc.compress(mlp_model(), dc, sparse_ratio=0.8, class_num=16)
    onnx_dc.pack(dc, dcz)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    want = onnx_dc.InferenceSession(result.model).run(None, {"x": x})[0]
    for decode in (True, False):  # rebuilt by onnx_dc, or folded by onnxruntime: the options reach either
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = onnx_dc.InferenceSession(dcz, decode=decode, sess_options=options,
                                           providers=["CPUExecutionProvider"], provider_options=[{}])
        assert session.get_providers() == ["CPUExecutionProvider"]
        given = session.get_session_options()
        assert given.intra_op_num_threads == 1
        assert given.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="'NoSuchExecutionProvider' is not in available provider names"):
        onnx_dc.InferenceSession(dcz, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])  # passed on
    assert onnx_dc.InferenceSession(dcz, 2).get_session_options().intra_op_num_threads == 2  # as before
    with pytest.raises(onnx_dc.OnnxDcError, match="give threads / spin or sess_options, not both"):
        onnx_dc.InferenceSession(dcz, 2, sess_options=ort.SessionOptions())


def test_pack_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    write_model(mlp_model(), src)
    bad = tmp_path / "bad.dcz"
    dc = tmp_path / "m.dc.onnx"
    onnx_dc.compress(src, dc, class_num=4)
    onnx_dc.pack(dc, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["unpack", str(bad), "-o", str(tmp_path / "out.dc.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnx-dc: error: ") and err.count("\n") == 1 and "bad.dcz" in err
    assert not (tmp_path / "out.dc.onnx").exists()
    assert main(["pack", str(dc), "-o", str(dc)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
