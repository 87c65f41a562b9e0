"""``codebook: channel``: the layer's codebook times a float16 scale per output channel.

The decoder functions rebuild exactly what NumPy decodes and what the report counts; the
scales lie along each op's output channels; the setting survives restore, pack / unpack
and fine-tuning; and on a real batch-norm-folded network (the CIFAR-10 ResNet-20 of
../shared/data/real) it lowers the output error at 16 shared values.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from calib_images import require, write_folder
from conftest import SHARED_DATA, conv_model, finish_model, init, mlp_model, needs_training, run
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

import onnx_dc
from onnx_dc.api import finish
from onnx_dc.cli import main
from onnx_dc.data.calib import parse_calib_spec
from onnx_dc.errors import ConfigError
from onnx_dc.graph import layout
from onnx_dc.graph.io import serialize, write_model
from onnx_dc.train.restore import state_from_dc

RESNET20 = SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"
CHANNEL = {"defaults": {"codebook": "channel"}}


def matmul_model(rows: int = 40, cols: int = 24, seed: int = 0) -> onnx.ModelProto:
    """x [N, rows] @ W [rows, cols]: the output channels are W's columns."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (rows, cols)).astype(np.float32) * rng.uniform(0.01, 3, cols).astype(np.float32)
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "mm",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])], [init("w", w)])
    return finish_model(g)


def decoded_in_onnxruntime(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every decoder's output, computed by the model's own decoder functions in onnxruntime."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = [n.output[0] for n in layout.decoder_nodes(out.graph)]
    out.graph.output.extend(oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    feeds = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], np.float32)
             for i in out.graph.input if i.name not in {t.name for t in out.graph.initializer}}
    got = run(out, feeds)
    return dict(zip(names, got[len(model.graph.output):]))


def check_decoders_rebuild_what_is_counted(result) -> None:
    model = result.model
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    in_ort = decoded_in_onnxruntime(model)
    rows = {r.weight: r for r in result.layers}
    scaled = 0
    for node in layout.decoder_nodes(model.graph):
        dec = layout.read_decoder(node)
        got = layout.decode(dec, arrays)
        np.testing.assert_array_equal(in_ort[dec.weight], got.weights)  # bit for bit
        layer = result.state.layers[dec.weight]
        np.testing.assert_array_equal(got.weights, layer.weights)
        row = rows[dec.weight]
        stored = sum(len(inits[name].raw_data) for name in dec.inputs.values())
        assert row.total_bytes == stored, dec.weight
        if dec.scaled:
            scaled += 1
            channels = dec.shape[layer.scale_axis]
            assert row.codebook == "channel" and row.scale_bytes == 2 * channels
            assert row.codebook_bytes == 4 * layer.codebook.size + 2 * channels
            assert inits[dec.inputs[layout.SCALE]].data_type == TensorProto.FLOAT16
            assert node.op_type.endswith("_s") and dec.settings.codebook.value == "channel"
    assert scaled, "no decoder with channel scales"
    assert layout.metadata(model)[layout.META_VERSION] == layout.SCALED_FORMAT_VERSION


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_decoder_rebuilds_exactly_what_the_report_counts(form):
    result = onnx_dc.compress(mlp_model(sizes=(64, 48, 10)), None, CHANNEL, sparse_ratio=0.6, class_num=8, form=form)
    check_decoders_rebuild_what_is_counted(result)
    assert {r.form for r in result.layers} == {form}


def test_width_specialised_functions_scale_too():
    """A weight above layout.GENERIC_MAX_NUMEL gets functions specialised to its widths, with the ``_s`` part."""
    result = onnx_dc.compress(matmul_model(1100, 1000), None, CHANNEL, sparse_ratio=0.5, class_num=16)
    (node,) = layout.decoder_nodes(result.model.graph)
    assert node.op_type == "DecodeSparse_c5_i2_s" or (node.op_type.startswith("Decode") and "_g" not in node.op_type)
    check_decoders_rebuild_what_is_counted(result)


def test_each_channel_holds_its_scale_times_the_layer_codebook():
    """Conv and ConvTranspose along their output channels, MatMul along its columns, a weight behind a
    Transpose along its stored axis 0; every kept weight is s_r * codebook[code]."""
    for model, axes in ((conv_model(), {"conv_w": 0, "deconv_w": 1, "fc_wt": 0}), (matmul_model(), {"w": 1})):
        result = onnx_dc.compress(model, None, CHANNEL, class_num=4)
        check_decoders_rebuild_what_is_counted(result)
        for name, axis in axes.items():
            layer = result.state.layers[name]
            assert layer.scale_axis == axis and layer.scale.shape == (layer.weights.shape[axis],), name
            np.testing.assert_array_equal(layer.scale, layer.scale.astype(np.float16).astype(np.float32))
            rebuilt = layer.codebook[layer.codes] * layer.scale.reshape(layer.scale_shape())
            np.testing.assert_array_equal(layer.weights, rebuilt)
    # channels of very different sizes: a channel codebook follows each, a layer codebook cannot
    layer_err = [], []
    for i, config in enumerate(({}, CHANNEL)):
        state = onnx_dc.compress(matmul_model(), None, config, class_num=4).state
        w = onnx_dc.prepare(matmul_model()).layers["w"].weights
        err = (state.layers["w"].weights - w) / np.linalg.norm(w, axis=0)
        layer_err[i].append(float(np.sum(err**2)))
    assert layer_err[1][0] < 0.5 * layer_err[0][0], layer_err


def test_gemm_scales_follow_trans_b():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(12, 7)).astype(np.float32)  # [in, out] with transB = 0
    g = oh.make_graph([oh.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "gemm",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])], [init("w", w)])
    result = onnx_dc.compress(finish_model(g), None, CHANNEL, class_num=4)
    assert result.state.layers["w"].scale_axis == 1
    assert onnx_dc.compress(mlp_model(), None, CHANNEL, class_num=4).state.layers["w0"].scale_axis == 0  # transB=1


def test_restore_and_lower_again_give_the_same_bytes():
    result = onnx_dc.compress(conv_model(), None, CHANNEL, sparse_ratio=0.5, class_num=4)
    restored = state_from_dc(result.model)
    for name, layer in result.state.layers.items():
        got = restored.layers[name]
        np.testing.assert_array_equal(got.scale, layer.scale)
        assert got.scale_axis == layer.scale_axis and got.entry.settings == layer.entry.settings
    assert serialize(finish(restored).model) == serialize(result.model)


def test_layer_codebook_files_are_unchanged():
    """Without the setting nothing is scaled and the format stays 3."""
    result = onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8)
    assert all(not layout.read_decoder(n).scaled for n in layout.decoder_nodes(result.model.graph))
    assert layout.metadata(result.model)[layout.META_VERSION] == layout.FORMAT_VERSION == "3"
    assert all(layer.scale is None for layer in result.state.layers.values())


def packed_round_trip(tmp_path, codebook: str):
    """conv_model compressed (0.5 / 4, ``--codebook``), packed and unpacked by the CLI: (dc, dcz, back), the
    unpacked file byte for byte the compressed one."""
    src = tmp_path / "m.onnx"
    write_model(conv_model(), src)
    dc, dcz, back = tmp_path / "m.dc.onnx", tmp_path / "m.dcz", tmp_path / "back.dc.onnx"
    assert main(["compress", str(src), "-o", str(dc), "--sparse-ratio", "0.5", "--class-num", "4",
                 "--codebook", codebook, "-q"]) == 0
    assert main(["pack", str(dc), "-o", str(dcz), "-q"]) == 0
    assert main(["unpack", str(dcz), "-o", str(back), "-q"]) == 0
    assert back.read_bytes() == dc.read_bytes()
    return dc, dcz, back


def test_pack_unpack_and_report_from_the_dcz(tmp_path, capsys):
    dc, dcz, back = packed_round_trip(tmp_path, "channel")
    capsys.readouterr()
    assert main(["report", str(dcz)]) == 0
    table = capsys.readouterr().out
    assert "4/ch" in table
    x = np.random.default_rng(0).normal(size=(3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(str(dc), {"x": x})[0], run(str(back), {"x": x})[0])


def cli_refuses_codebook(tmp_path, capsys, value: str) -> None:
    """``compress --codebook VALUE`` exits 2 naming the flag, writing nothing."""
    src = tmp_path / "m.onnx"
    write_model(mlp_model(), src)
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(src), "-o", str(tmp_path / "o.dc.onnx"), "--codebook", value])
    assert exc.value.code == 2
    assert "--codebook" in capsys.readouterr().err
    assert not (tmp_path / "o.dc.onnx").exists()


def test_bad_setting_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="codebook"):
        onnx_dc.compress(mlp_model(), None, {"defaults": {"codebook": "row"}})
    cli_refuses_codebook(tmp_path, capsys, "rows")


@needs_training
def test_codebook_fine_tuning_keeps_the_scales_and_lowers_the_loss(tmp_path):
    """Labeled fine-tuning of the shared values (Eq. 3 with s_i G_i) on MNIST keeps scales, codes and layout."""
    from conftest import MNIST_DIR, ROOT

    lenet = ROOT / "models" / "lenet_300_100.onnx"
    dc = tmp_path / "l.dc.onnx"
    result = onnx_dc.compress(lenet, dc, CHANNEL, sparse_ratio=0.9, class_num=8)
    spec = f"mnist:{require(MNIST_DIR)}"
    before = onnx_dc.evaluate(dc, spec, limit=2000).accuracy
    tuned = onnx_dc.finetune(dc, tmp_path / "t.dc.onnx", spec, epochs=1)
    after = onnx_dc.evaluate(tmp_path / "t.dc.onnx", spec, limit=2000).accuracy
    for name, layer in tuned.state.layers.items():
        old = result.state.layers[name]
        np.testing.assert_array_equal(layer.scale, old.scale)
        np.testing.assert_array_equal(layer.codes, old.codes)
        np.testing.assert_array_equal(layer.weights, layer.codebook[layer.codes] * layer.scale.reshape(layer.scale_shape()))
    assert after > before, (before, after)
    check_decoders_rebuild_what_is_counted(tuned)


def test_resnet20_channel_scales_lower_the_output_error_at_16_values(tmp_path):
    """Batch-norm-folded convolutions, data-aware at 16 values unpruned (what the size target picks most) on photo
    crops: the held-out output error falls (rel. L2 .097 -> .082 with numpy 2.4, scikit-learn 1.9, pillow 13; at
    0.5 / 16 the pruning's error dominates and the gain is 1%)."""
    model = require(RESNET20)
    folder = write_folder(tmp_path / "imgs", 96, (32, 32))
    calib = parse_calib_spec(f"images:{folder}", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    errors = {}
    for name, config in (("layer", {}), ("channel", CHANNEL)):
        result = onnx_dc.compress(model, None, config, calib=calib, sparse_ratio=0.0, class_num=16)
        (out,) = result.fidelity.outputs
        errors[name] = out.rel_l2
        if name == "channel":
            check_decoders_rebuild_what_is_counted(result)
    assert errors["channel"] < 0.97 * errors["layer"], errors


def test_sweep_tries_codebooks_and_the_size_target_may_choose_channel_scales(tmp_path, capsys):
    """``sensitivity --codebooks layer,channel`` measures each shared setting both ways; the JSON keeps them;
    ``compress --target-ratio`` picks among them per layer and the report shows the choice."""
    from conftest import MNIST_DIR, ROOT

    from onnx_dc.analysis.curves import Sensitivity, Setting, config_for, settings_grid

    grid = settings_grid((0.9,), (4,), ("layer", "channel"))
    assert [s.label() for s in grid] == ["r0.9", "k4", "k4/ch", "r0.9+k4", "r0.9+k4/ch"]
    lenet = ROOT / "models" / "lenet_300_100.onnx"
    data = f"mnist:{require(MNIST_DIR)}"
    sens_json, out = tmp_path / "s.json", tmp_path / "t.dc.onnx"
    assert main(["sensitivity", str(lenet), "--data", data, "--limit", "300", "--ratios", "0.9", "--class-nums", "4",
                 "--codebooks", "layer,channel", "--json", str(sens_json), "-q"]) == 0
    sens = Sensitivity.from_dict(__import__("json").loads(sens_json.read_text()))
    assert sens.codebooks == ("layer", "channel")
    assert {p.setting for p in sens.options("ip1.weight")} == set(grid)
    rule = config_for({"ip1.weight": Setting(0.9, 4, "channel")}, sens.layers)["nodes"][0]
    assert rule["codebook"] == "channel" and rule["class_num"] == 4
    capsys.readouterr()
    assert main(["compress", str(lenet), "-o", str(out), "--data", data, "--limit", "300", "--target-ratio", "30",
                 "--sensitivity", str(sens_json), "--json"]) == 0
    result = __import__("json").loads(capsys.readouterr().out)
    chosen = result["target"]["config"]["nodes"]
    rows = {r["weight"]: r for r in result["layers"]}
    for rule in chosen:
        weight = next(info.weight for info in sens.layers if info.node == rule["match"])
        if not rule.get("skip"):
            assert rows[weight]["codebook"] == rule.get("codebook", "layer"), rule
    assert any(rule.get("codebook") == "channel" for rule in chosen), chosen  # channel scales won a layer here
    assert main(["sensitivity", str(lenet), "--data", data, "--codebooks", "rows"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--codebooks: 'rows' is not a codebook setting" in err
