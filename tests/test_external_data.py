"""Models with external data: read once by path, sizes that count the data file, bad files refused.

A real model over 2 GB is a benchmark (scripts/bench_scale.py), not a test; here the 2 GB
limit is lowered so that a small model takes the same paths (lazy memory-mapped weights,
output written with a data file).
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import mlp_model
from onnx_dc import compress
from onnx_dc.cli import main
from onnx_dc.errors import ModelError
from onnx_dc.graph import external


def save_external(model: onnx.ModelProto, folder, name="mlp.onnx", location="mlp.data"):
    path = folder / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def outputs(model_path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)


def test_external_data_model_compresses_and_counts_its_data_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = save_external(mlp_model(seed=3), src)
    before = digest(src)
    total = path.stat().st_size + (src / "mlp.data").stat().st_size
    assert path.stat().st_size < 1000 < total
    out = tmp_path / "mlp.dc.onnx"
    result = compress(path, out, sparse_ratio=0.5, class_num=8)
    assert result.report.source_file_bytes == total
    assert result.external_data is None and out.is_file() and not (tmp_path / "mlp.dc.onnx.data").exists()
    assert result.report.totals()["ratio_vs_source_file"] > 1.5
    assert digest(src) == before, "the input files are never modified"
    dense = tmp_path / "dense.onnx"
    onnx.save_model(result.state.dense_model(), str(dense))
    np.testing.assert_allclose(outputs(out, X), outputs(dense, X), rtol=1e-5, atol=1e-5)


def test_model_over_the_protobuf_limit_stays_mapped_and_is_written_with_a_data_file(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    path = save_external(mlp_model(seed=4), src)
    reference = outputs(path, X)
    monkeypatch.setattr(external, "MAX_PROTO_BYTES", 2000)  # this small model now counts as "over 2 GB"
    monkeypatch.setattr(external, "EXTERNAL_MIN_BYTES", 64)
    out = tmp_path / "out" / "mlp.dc.onnx"
    out.parent.mkdir()
    # no pruning, no sharing for w1: it stays float32 and must travel to the output's data file
    config = {"nodes": [{"match": "fc1", "skip": True}]}
    result = compress(path, out, config, sparse_ratio=0.5, class_num=8)
    assert result.external_data == "mlp.dc.onnx.data"
    data = out.parent / result.external_data
    assert data.is_file() and result.report.file_bytes == out.stat().st_size + data.stat().st_size
    locations = {e.value for t in onnx.load(str(out), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"mlp.dc.onnx.data"}, "only relative locations beside the output are written"
    onnx.checker.check_model(str(out))
    monkeypatch.undo()
    got = outputs(out, X)
    dense = tmp_path / "dense.onnx"
    onnx.save_model(result.state.dense_model(), str(dense), save_as_external_data=True, location="dense.data")
    np.testing.assert_allclose(got, outputs(dense, X), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, reference), "w0 was compressed"


def _set_location(path, location):
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def _missing(folder):
    (folder / "mlp.data").unlink()


def _truncated(folder):
    data = folder / "mlp.data"
    data.write_bytes(data.read_bytes()[:-100])


def _escaping(folder):
    (folder.parent / "outside.data").write_bytes((folder / "mlp.data").read_bytes())
    _set_location(folder / "mlp.onnx", "../outside.data")


@pytest.mark.parametrize("damage, words", [
    (_missing, "is missing; keep it beside the model"),
    (_truncated, "is truncated"),
    (_escaping, "points outside the model's folder"),
])
def test_bad_external_data_is_one_line_exit_2_and_files_untouched(tmp_path, capsys, damage, words):
    src = tmp_path / "src"
    src.mkdir()
    path = save_external(mlp_model(seed=5), src)
    damage(src)
    before = digest(src)
    with pytest.raises(ModelError, match=words):
        compress(path, sparse_ratio=0.5)
    code = main(["compress", str(path), "-o", str(tmp_path / "o.dc.onnx"), "--sparse-ratio", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err and str(path) in err, err
    assert digest(src) == before
    assert not (tmp_path / "o.dc.onnx").exists()


def test_absolute_external_path_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = save_external(mlp_model(seed=6), src)
    _set_location(path, str(src / "mlp.data"))
    with pytest.raises(ModelError, match="is absolute"):
        compress(path, sparse_ratio=0.5)


def test_weights_embedded_in_the_model_file_are_mapped_not_copied(tmp_path):
    from onnx_dc.graph.io import read_model
    from onnx_dc.graph.wire import split_model_bytes

    model = mlp_model(seed=7)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    before = digest(tmp_path)
    stub = onnx.ModelProto()
    stub.ParseFromString(split_model_bytes(path.read_bytes(), "mlp.onnx", 1024))
    moved = {t.name for t in stub.graph.initializer if external.is_external(t)}
    assert moved == {t.name for t in model.graph.initializer if len(t.raw_data) >= 1024} and moved
    lazy, size = read_model(path, lazy=True)
    assert size == path.stat().st_size, "the model file is counted once"
    for tensor, original in zip(lazy.graph.initializer, model.graph.initializer):
        np.testing.assert_array_equal(external.to_array(tensor), onnx.numpy_helper.to_array(original))
    writable = external.to_array(lazy.graph.initializer[0], writable=True)
    writable[...] = 0.0  # copy-on-write: this process only
    result = compress(path, tmp_path / "mlp.dc.onnx", sparse_ratio=0.5, class_num=8)
    assert digest(tmp_path) == {**before, "mlp.dc.onnx": digest(tmp_path)["mlp.dc.onnx"]}
    eager, _ = read_model(path)
    assert not any(external.is_external(t) for t in eager.graph.initializer)
    assert result.report.source_file_bytes == path.stat().st_size


def test_cli_says_when_the_output_has_a_data_file(tmp_path, monkeypatch, capsys):
    path = save_external(mlp_model(seed=8), tmp_path)
    monkeypatch.setattr(external, "MAX_PROTO_BYTES", 2000)
    monkeypatch.setattr(external, "EXTERNAL_MIN_BYTES", 64)
    out = tmp_path / "o.dc.onnx"
    assert main(["compress", str(path), "-o", str(out), "--sparse-ratio", "0.5", "--no-quantize"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (over 2 GB: its large tensors are in o.dc.onnx.data beside it)" in printed
    assert (tmp_path / "o.dc.onnx.data").is_file()
