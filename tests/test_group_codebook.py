"""``codebook: group:G``: one codebook per group of G output channels.

The decoder functions rebuild exactly what NumPy decodes and what the report counts (the groups'
codebooks and the codes within them); each weight takes a value of its own group's codebook, along
each op's output channels; the setting parses, survives restore, pack / unpack and fine-tuning with
moving codes; the data-aware passes (GPTQ codes, group refit) keep codes in their group and never
raise the layer error; and on a real transformer (MiniLM of ../shared/data/real) the groups lower
the error of its feed-forward output projections at 16 values.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from calib_images import require, write_folder
from conftest import SHARED_DATA, conv_model, mlp_model, needs_training
from onnx import numpy_helper
from test_channel_codebook import cli_refuses_codebook, decoded_in_onnxruntime, matmul_model, packed_round_trip

import onnx_dc
from onnx_dc.api import finish
from onnx_dc.cli import main
from onnx_dc.config import Codebook, Settings, parse_config
from onnx_dc.data.calib import parse_calib_spec
from onnx_dc.errors import ConfigError
from onnx_dc.graph import layout
from onnx_dc.graph.io import serialize
from onnx_dc.passes.share import share_layer
from onnx_dc.passes.state import LayerState
from onnx_dc.train.restore import state_from_dc

MINILM = SHARED_DATA / "real" / "minilm" / "minilm.onnx"
RESNET20 = SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"


def group(rows: int) -> dict:
    return {"defaults": {"codebook": f"group:{rows}"}}


def check_groups(result, rows: int) -> None:
    """Every decoder is grouped and rebuilds, in onnxruntime and in NumPy, the state's weights bit for bit;
    the report counts the stored bytes (a codebook of z + groups * k float32 values); each kept weight's
    code lies in its own channel's group."""
    model = result.model
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    in_ort = decoded_in_onnxruntime(model)
    report = {r.weight: r for r in result.layers}
    nodes = layout.decoder_nodes(model.graph)
    assert nodes
    for node in nodes:
        dec = layout.read_decoder(node)
        layer = result.state.layers[dec.weight]
        got = layout.decode(dec, arrays)
        np.testing.assert_array_equal(in_ort[dec.weight], got.weights)
        np.testing.assert_array_equal(got.weights, layer.weights)
        np.testing.assert_array_equal(got.codes, layer.codes)
        np.testing.assert_array_equal(layout.decode_weight(dec, arrays), layer.weights)  # InferenceSession's path
        assert node.op_type.endswith("_r") and dec.settings.codebook == Codebook.GROUP
        channels = dec.shape[layer.scale_axis]
        groups, k, z = -(-channels // rows), layer.group_size(), int(layer.reserves_zero)
        assert dec.groups == (rows, k, int(np.prod(dec.shape[layer.scale_axis + 1:])), channels)
        assert layer.codebook.size == z + groups * k
        row = report[dec.weight]
        assert row.codebook == f"group:{rows}" and row.codebook_bytes == 4 * layer.codebook.size
        assert row.total_bytes == sum(len(inits[name].raw_data) for name in dec.inputs.values())
        assert dec.code_bits == max(1, int(np.ceil(np.log2(k + z))))  # codes within a group, not the whole book
        flat = layer.codes.ravel().astype(np.int64)
        kept = np.flatnonzero(flat) if z else np.arange(flat.size)
        channel = np.indices(layer.codes.shape)[layer.scale_axis].ravel()[kept]
        np.testing.assert_array_equal((flat[kept] - z) // k, channel // rows)
    assert layout.metadata(model)[layout.META_VERSION] == layout.GROUPED_FORMAT_VERSION == "5"


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_decoder_rebuilds_exactly_what_the_report_counts(form):
    result = onnx_dc.compress(mlp_model(sizes=(64, 48, 10)), None, group(4), sparse_ratio=0.6, class_num=8,
                              form=form)
    check_groups(result, 4)
    assert {r.form for r in result.layers} == {form}


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_width_specialised_functions_group_too(ratio):
    """A weight above layout.GENERIC_MAX_NUMEL gets functions specialised to its widths, with the ``_r`` part."""
    result = onnx_dc.compress(matmul_model(1100, 1000), None, group(16), sparse_ratio=ratio, class_num=16)
    (node,) = layout.decoder_nodes(result.model.graph)
    assert "_g" not in node.op_type and node.op_type.endswith("_r")
    check_groups(result, 16)


def test_groups_lie_along_each_ops_output_channels():
    """Conv and ConvTranspose along their output channels, MatMul along its columns; a group holds only
    its own channels' values."""
    for model, axes in ((conv_model(), {"conv_w": 0, "deconv_w": 1, "fc_wt": 0}), (matmul_model(), {"w": 1})):
        result = onnx_dc.compress(model, None, group(2), class_num=4)
        check_groups(result, 2)
        for name, axis in axes.items():
            assert result.state.layers[name].scale_axis == axis, name
    # columns of very different sizes (0.01..3): the squared error falls with finer groups, and with one column a
    # group each column's values are its size (its error relative to its own norm: 2.4 against 14.2)
    w = onnx_dc.prepare(matmul_model()).layers["w"].weights
    plain, relative = {}, {}
    for rows in (0, 4, 1):
        got = onnx_dc.compress(matmul_model(), None, group(rows) if rows else {}, class_num=4).state.layers["w"].weights
        plain[rows] = float(np.sum((got - w) ** 2))
        relative[rows] = float(np.sum(((got - w) / np.linalg.norm(w, axis=0)) ** 2))
    assert plain[1] < plain[4] < plain[0], plain
    assert relative[1] < 0.25 * relative[0], relative


def test_the_setting_parses_and_bad_values_are_one_line(tmp_path, capsys):
    config = parse_config({"defaults": {"codebook": "group:16"},
                           "nodes": [{"match": "fc*", "codebook": "group", "group_rows": 4}]})
    assert config.settings_for("a", "Conv", "w")[0].codebook == Codebook.GROUP
    assert config.settings_for("a", "Conv", "w")[0].group_rows == 16
    assert config.settings_for("fc1", "Gemm", "w")[0].group_rows == 4
    assert Settings(codebook=Codebook.GROUP, group_rows=16).to_dict()["codebook"] == "group:16"
    for bad in ("group:0", "group:x", "channel:4", "rows"):
        with pytest.raises(ConfigError, match="codebook") as exc:
            onnx_dc.compress(mlp_model(), None, {"defaults": {"codebook": bad}})
        assert "\n" not in str(exc.value)
    cli_refuses_codebook(tmp_path, capsys, "group:0")


def test_restore_and_lower_again_give_the_same_bytes():
    result = onnx_dc.compress(conv_model(), None, group(2), sparse_ratio=0.5, class_num=4)
    restored = state_from_dc(result.model)
    for name, layer in result.state.layers.items():
        got = restored.layers[name]
        assert (got.group_rows, got.scale_axis) == (layer.group_rows, layer.scale_axis), name
        np.testing.assert_array_equal(got.codes, layer.codes)
        assert got.entry.settings == layer.entry.settings
    assert serialize(finish(restored).model) == serialize(result.model)


def test_pack_unpack_and_report_from_the_dcz(tmp_path, capsys):
    _, dcz, _ = packed_round_trip(tmp_path, "group:2")
    capsys.readouterr()
    assert main(["report", str(dcz)]) == 0
    assert "4/g2" in capsys.readouterr().out
    assert main(["report", str(dcz), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert {r["codebook"] for r in rows} == {"group:2"}


def codes_in_their_groups(layer: LayerState, rows: int) -> bool:
    """Whether every kept weight's code lies in its own output channel's group."""
    z, k = int(layer.reserves_zero), layer.group_size()
    flat = layer.codes.ravel().astype(np.int64)
    kept = np.flatnonzero(flat) if z else np.arange(flat.size)
    channel = np.indices(layer.codes.shape)[layer.scale_axis].ravel()[kept]
    return bool(np.array_equal((flat[kept] - z) // k, channel // rows))


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_data_aware_passes_keep_codes_in_their_group_and_never_raise_a_layer_error(tmp_path, ratio):
    """The first 10 layers of the batch-norm-folded ResNet-20 (../shared/data/real) at group:8 / 16 values on photo
    crops: GPTQ's codes (unpruned layers) and the per-group refit keep every code in its group, and no layer
    ends with a larger output error on the samples than weighted k-means alone gives it; summed, they lower it."""
    from onnx_dc.data.calib import load_calib
    from onnx_dc.passes.data_aware import (DataAwareResult, DataAwareSettings, compress_layer, layer_error,
                                           original_weights)
    from onnx_dc.runtime.collect import collect_stats

    model = require(RESNET20)
    folder = write_folder(tmp_path / "imgs", 24, (32, 32))
    spec = parse_calib_spec(f"images:{folder}", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    names = list(onnx_dc.prepare(model).layers)[:10]
    config = {"version": 1, "defaults": {"codebook": "group:8"},
              "nodes": [{"match": n, "sparse_ratio": ratio, "class_num": 16} for n in names] + [{"match": "*", "skip": True}]}
    errors, results = {}, {}
    for passes in (False, True):
        state = onnx_dc.prepare(model, config=config)
        stats = collect_stats(state, load_calib(spec, state.model).calib).stats
        state.keep_originals()
        result = DataAwareResult()
        settings = DataAwareSettings(gptq="unpruned" if passes else False, refit=passes, bias_correction=False,
                                     sequential=False)
        for name in names:
            compress_layer(state, name, stats[name], settings, result)
            assert codes_in_their_groups(state.layers[name], 8), name
        errors[passes] = {n: layer_error(state.layers[n].weights, original_weights(state, n), stats[n]) for n in names}
        results[passes] = result
    assert results[True].refit and (ratio or results[True].gptq)
    for name in names:
        assert errors[True][name] <= errors[False][name] * (1 + 1e-9), name
    assert sum(errors[True].values()) < 0.95 * sum(errors[False].values()), (errors[True], errors[False])


@needs_training
def test_fine_tuning_moves_codes_only_within_their_group(tmp_path):
    """Labeled fine-tuning on MNIST with codes moving through latent values (reassign_lr > 0): codes change,
    stay in their group, and the result decodes exactly as the state says."""
    from conftest import MNIST_DIR, ROOT

    lenet = ROOT / "models" / "lenet_300_100.onnx"
    dc = tmp_path / "l.dc.onnx"
    result = onnx_dc.compress(lenet, dc, group(8), sparse_ratio=0.9, class_num=8)
    spec = f"mnist:{require(MNIST_DIR)}"
    before = onnx_dc.evaluate(dc, spec, limit=2000).accuracy
    tuned = onnx_dc.finetune(dc, tmp_path / "t.dc.onnx", spec, epochs=1,
                             schedule={"codebook": {"reassign_lr": 1e-2}})
    after = onnx_dc.evaluate(tmp_path / "t.dc.onnx", spec, limit=2000).accuracy
    moved = sum(int(np.count_nonzero(layer.codes != result.state.layers[n].codes))
                for n, layer in tuned.state.layers.items())
    assert moved > 0
    check_groups(tuned, 8)
    assert after > before, (before, after)


def test_minilm_groups_lower_the_feed_forward_output_error_at_16_values():
    """MiniLM's feed-forward output projections ([1536, 384] MatMul weights): 16 values per 4 output channels
    against one codebook for the layer and against channel scales, weight-level relative error (rel. L2^2
    .047 / .019 / .014 on the first one)."""
    model = onnx.load(str(require(MINILM)))
    state = onnx_dc.prepare(model)
    downs = [n for n, layer in state.layers.items() if layer.weights.shape == (1536, 384)][:2]
    assert downs
    for name in downs:
        layer = state.layers[name]
        w = layer.weights.copy()
        errors = {}
        for book, rows in (("layer", 8), ("channel", 8), ("group", 4)):
            settings = Settings(class_num=16, codebook=Codebook(book), group_rows=rows)
            trial = LayerState(dataclasses.replace(layer.entry, settings=settings), w.copy())
            assert share_layer(trial)
            errors[book] = float(np.sum((trial.weights - w) ** 2) / np.sum(w**2))
        assert errors["group"] < 0.5 * errors["layer"] and errors["group"] < errors["channel"], (name, errors)


def test_a_sweep_tries_groups_as_a_codebook_setting(capsys):
    """``--codebooks layer,group:G`` lists; a sweep's setting with groups labels and applies them."""
    from onnx_dc.analysis.curves import Setting, settings_grid
    from onnx_dc.errors import ArgumentError
    from onnx_dc.sweep_grid import parse_codebooks

    assert parse_codebooks("group:4, layer,group:16,group:4") == ("layer", "group:16", "group:4")
    with pytest.raises(ArgumentError, match="group:G"):
        parse_codebooks("group:0")
    grid = settings_grid((0.5,), (16,), ("layer", "group:4"))
    assert [s.label() for s in grid] == ["r0.5", "k16", "k16/g4", "r0.5+k16", "r0.5+k16/g4"]
    entry = onnx_dc.prepare(mlp_model()).layers["w0"].entry
    settings = Setting(0.5, 16, "group:4").apply(entry).settings
    assert (settings.codebook, settings.group_rows, settings.class_num) == (Codebook.GROUP, 4, 16)
    assert Setting(0.5, 16, "layer").apply(entry).settings.codebook == Codebook.LAYER


def test_sensitivity_cli_sweeps_groups(tmp_path):
    """``onnx-dc sensitivity --codebooks layer,group:4`` on LeNet-300-100 (MNIST) measures each shared setting both
    ways and keeps them in its JSON, which a size target reads."""
    from conftest import MNIST_DIR, ROOT

    from onnx_dc.analysis.curves import Sensitivity, Setting

    lenet = ROOT / "models" / "lenet_300_100.onnx"
    sens_json = tmp_path / "s.json"
    assert main(["sensitivity", str(lenet), "--data", f"mnist:{require(MNIST_DIR)}", "--limit", "300", "--ratios",
                 "0.9", "--class-nums", "4", "--codebooks", "layer,group:4", "--json", str(sens_json), "-q"]) == 0
    sens = Sensitivity.from_dict(json.loads(sens_json.read_text()))
    assert sens.codebooks == ("layer", "group:4")
    options = {p.setting: p for p in sens.options("ip1.weight")}
    assert Setting(0.9, 4, "group:4") in options and Setting(0.0, 4, "group:4") in options
    # 4 values per 4 of ip1's 300 output channels cost bytes a layer codebook does not: more, measured
    assert options[Setting(0.0, 4, "group:4")].bytes > options[Setting(0.0, 4, "layer")].bytes
