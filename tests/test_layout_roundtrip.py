"""Settings survive every trip through a ``*.dc.onnx``: restore, finetune, pack / unpack, report, export-dense."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import mlp_model, run

import onnx_dc
from onnx_dc.api import finish
from onnx_dc.cli import main
from onnx_dc.graph import layout
from onnx_dc.graph.io import serialize
from onnx_dc.graph.io import write_model
from onnx_dc.train.restore import state_from_dc

SIZES = (64, 96, 64, 10)
# Non-default settings in every layer: a pruned layer forced dense, a fixed 7-bit index with
# density init and a seed, an unpruned layer with 256 shared values (8-bit codes, no reserved zero).
CONFIG = {"nodes": [
    {"match": "fc0", "sparse_ratio": 0.5, "class_num": 16, "form": "dense"},
    {"match": "fc1", "sparse_ratio": 0.8, "class_num": 8, "index_bits": 7, "centroid_init": "density", "seed": 3,
     "form": "sparse"},
    {"match": "fc2", "class_num": 256},
]}


def _layouts(model: onnx.ModelProto) -> list[tuple]:
    """What must not change: per decoder, its op, widths, count and settings."""
    out = []
    for node in layout.decoder_nodes(model.graph):
        d = layout.read_decoder(node)
        out.append((node.op_type, d.code_bits, d.index_bits, d.count, d.settings, d.reserves_zero))
    return out


@pytest.fixture
def compressed(tmp_path):
    path = tmp_path / "m.dc.onnx"
    return path, onnx_dc.compress(mlp_model(sizes=SIZES), path, CONFIG)


def test_restore_brings_back_every_setting_and_the_same_bytes(compressed):
    _, result = compressed
    restored = state_from_dc(result.model)
    for name, layer in result.state.layers.items():
        assert restored.layers[name].entry.settings == layer.entry.settings, name
    assert serialize(finish(restored).model) == serialize(result.model)
    rows = {r.weight: r for r in result.layers}
    assert (rows["w0"].form, rows["w1"].form, rows["w1"].index_bits, rows["w2"].form) == ("dense", "sparse", 7, "dense")


def test_unpruned_256_shared_values_take_8_bit_codes(compressed):
    _, result = compressed
    row = next(r for r in result.layers if r.weight == "w2")
    assert (row.code_bits, row.codes_bytes, row.codebook_bytes) == (8, row.weights, 4 * 256)
    layer = result.state.layers["w2"]
    assert layer.mask is None and layer.codebook.size == 256 and int(layer.codes.max()) <= 255
    pruned = result.state.layers["w0"]
    assert pruned.codebook[0] == 0.0 and pruned.codebook.size == 17


def test_finetune_keeps_the_layout_of_pruned_and_unpruned_layers(compressed, tmp_path):
    path, result = compressed
    tuned = onnx_dc.finetune(path, tmp_path / "t.dc.onnx", "digits", epochs=1, schedule={"codebook": {"lr": 1e-3}})
    assert _layouts(tuned.model) == _layouts(result.model)
    for name, layer in tuned.state.layers.items():
        np.testing.assert_array_equal(layer.codes, result.state.layers[name].codes)
    assert tuned.state.layers["w0"].codebook[0] == 0.0  # the reserved zero stays zero
    assert tuned.state.layers["w2"].codebook[0] != result.state.layers["w2"].codebook[0]  # a real centroid trains


def test_pack_unpack_report_keep_the_settings(compressed, tmp_path):
    path, result = compressed
    onnx_dc.pack(path, tmp_path / "m.dcz")
    onnx_dc.unpack(tmp_path / "m.dcz", tmp_path / "back.dc.onnx")
    assert (tmp_path / "back.dc.onnx").read_bytes() == path.read_bytes()
    packed = onnx_dc.report(tmp_path / "m.dcz")
    assert [(r.weight, r.form, r.code_bits, r.index_bits, r.kept) for r in packed.layers] == \
        [(r.weight, r.form, r.code_bits, r.index_bits, r.kept) for r in result.layers]
    assert all(r.coded for r in packed.layers)


@pytest.mark.parametrize("suffix", [".dc.onnx", ".dcz"])
def test_export_dense_matches_onnxruntime_on_the_compressed_model(compressed, tmp_path, capsys, suffix):
    path, result = compressed
    src = path
    if suffix == ".dcz":
        src = tmp_path / "m.dcz"
        onnx_dc.pack(path, src)
    out = tmp_path / "plain.onnx"
    assert main(["export-dense", str(src), "-o", str(out)]) == 0
    plain = onnx.load(str(out))
    onnx.checker.check_model(plain, full_check=True)
    assert not plain.functions and all(o.domain != layout.DOMAIN for o in plain.opset_import)
    assert all(n.domain != layout.DOMAIN for n in plain.graph.node) and plain.ir_version == 10
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_array_equal(run(plain, {"x": x})[0], run(result.model, {"x": x})[0])
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    for name, layer in result.state.layers.items():
        np.testing.assert_array_equal(weights[name], layer.weights)


def test_export_dense_refuses_plain_models_and_its_input(capsys, tmp_path, compressed):
    path, _ = compressed
    plain = tmp_path / "plain.onnx"
    write_model(mlp_model(), plain)
    assert main(["export-dense", str(plain), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["export-dense", str(path), "-o", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already plain ONNX" in err[0] and "overwrite" in err[1]


def test_inference_session_rebuilds_weights_outside_onnxruntime(compressed):
    import onnxruntime as ort

    path, _ = compressed
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    folded = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for source in (path, path.read_bytes()):
        session = onnx_dc.InferenceSession(source)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], folded)
    np.testing.assert_array_equal(onnx_dc.InferenceSession(path, decode=False).run(None, {"x": x})[0], folded)
