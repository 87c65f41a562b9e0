"""--calib end to end: compress with samples, fidelity tables, eval --against, bad input; real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_images import require, write_folder
from conftest import MNIST_DIR, SHARED_DATA, mlp_model

import onnx_dc
from onnx_dc.calibrate import fidelity
from onnx_dc.cli import main
from onnx_dc.graph.io import write_model

REAL = SHARED_DATA / "real"


def test_compress_with_calib_prints_fidelity_and_json(tmp_path, capsys):
    src = tmp_path / "mlp.onnx"
    write_model(mlp_model(), src)
    out = tmp_path / "mlp.dc.onnx"
    assert main(["compress", str(src), "-o", str(out), "--sparse-ratio", "0.5", "--class-num", "8",
                 "--calib", "digits", "--calib-limit", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    fid = result["fidelity"]
    assert fid["samples"] > 0 and fid["outputs"][0]["name"] == "y" and fid["outputs"][0]["top1_agreement"] is not None
    assert set(result["data_aware"]["passes"]) >= {"prune_by_activation", "weighted_kmeans", "bias_correction"}
    assert result["note"] is None
    # eval --against reproduces the same numbers on the same held-out samples
    assert main(["eval", str(out), "--against", str(src), "--calib", "digits", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["outputs"][0]["cosine"] == pytest.approx(fid["outputs"][0]["cosine"], rel=1e-6)


def test_compress_without_samples_says_accuracy_not_checked(tmp_path, capsys):
    src = tmp_path / "mlp.onnx"
    write_model(mlp_model(), src)
    assert main(["compress", str(src), "-o", str(tmp_path / "o.dc.onnx"), "--class-num", "8"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("accuracy not checked") and "--against" in err[0]


@pytest.mark.parametrize("limit", [1, 12])
def test_too_few_samples_to_hold_out_say_so_and_few_held_out_get_a_caveat(tmp_path, capsys, limit):
    """Issue 23 item 11: one sample held out none and the line said "compress ran without samples ... pass
    --calib", which was passed; a handful held out gave numbers with no caveat."""
    src = tmp_path / "mlp.onnx"
    write_model(mlp_model(), src)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).normal(size=(limit, 1, 64)).astype(np.float32))
    assert main(["compress", str(src), "-o", str(tmp_path / "o.dc.onnx"), "--class-num", "8",
                 "--calib", f"npz:{tmp_path / 'x.npz'}"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "ran without samples" not in text
    if limit == 1:
        assert "--calib gave 1 sample(s), all used by the passes and none held out" in text
    else:
        assert "held-out sample(s): a cosine or agreement from so few means little" in text


def test_poor_fidelity_names_the_layers(tmp_path):
    result = onnx_dc.compress(mlp_model(), None, sparse_ratio=0.95, class_num=2, calib="digits")
    assert result.fidelity.poor()
    names = [n for n, _ in result.fidelity.culprits]
    assert names and set(names) <= {"w0", "w1"}
    table = result.fidelity.to_table()
    assert any(f"layers most responsible: fc{i} [w{i}] (" in table for i in (0, 1)), table  # node [weight]


@pytest.mark.parametrize("case", ["empty", "unreadable", "size", "npz", "disagree", "channels"])
def test_bad_input_one_line_exit_2(tmp_path, capsys, case):
    from tests_models import image_model_file

    model = image_model_file(tmp_path)
    folder = write_folder(tmp_path / "imgs", 3, (24, 32))
    args = ["compress", str(model), "-o", str(tmp_path / "o.dc.onnx"), "--class-num", "8"]
    expect = {
        "empty": (["--calib", f"images:{tmp_path / 'none'}"], "no images"),
        "unreadable": (["--calib", f"images:{folder}"], "broken.png"),
        "size": (["--calib", f"images:{folder}", "--size", "20,20"], "expects"),
        "npz": (["--calib", f"npz:{tmp_path / 's.npz'}"], "'img'"),
        "disagree": (["--calib", f"images:{folder}", "--data", "digits"], "--data digits gives samples of shape"),
        "channels": (["--calib", f"images:{folder}", "--channels", "gray"], "channel"),
    }[case]
    (tmp_path / "none").mkdir()
    if case == "unreadable":
        (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    np.savez(tmp_path / "s.npz", other=np.zeros((3, 3, 24, 32), np.float32))
    assert main(args + expect[0]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect[1] in err and "Traceback" not in err
    assert not (tmp_path / "o.dc.onnx").exists()


def test_eval_against_a_model_with_other_inputs_is_one_line_exit_2(tmp_path, capsys):
    model, other = mlp_model(), mlp_model()
    other.graph.input[0].name = "pixels"
    for node in other.graph.node:
        node.input[:] = ["pixels" if name == "x" else name for name in node.input]
    write_model(model, tmp_path / "a.onnx")
    write_model(other, tmp_path / "b.onnx")
    assert main(["eval", str(tmp_path / "a.onnx"), "--against", str(tmp_path / "b.onnx"), "--calib", "digits"]) == 2
    err = capsys.readouterr().err
    assert err == (f"onnx-dc: error: {tmp_path / 'a.onnx'} does not match the original {tmp_path / 'b.onnx'}: its "
                   f"inputs are x, the original's are pixels; give the model {tmp_path / 'a.onnx'} was compressed "
                   "from\n")
    with pytest.raises(onnx_dc.ModelError, match="^model does not match the original model: its inputs are x"):
        fidelity(model, other, "digits")


def test_mnist_models_keep_top1_with_data_aware():
    require(MNIST_DIR)
    model = require(SHARED_DATA / "onnx" / "mnist-8.onnx")
    free = onnx_dc.compress(model, None, sparse_ratio=0.8, class_num=16)
    aware = onnx_dc.compress(model, None, sparse_ratio=0.8, class_num=16, calib=f"mnist:{MNIST_DIR}")
    free_fid = fidelity(free.model, model, f"mnist:{MNIST_DIR}")
    assert aware.fidelity.outputs[0].top1 > free_fid.outputs[0].top1 + 0.2
    assert aware.fidelity.outputs[0].rel_l2 < free_fid.outputs[0].rel_l2


@pytest.mark.parametrize("name, rel, spec", [
    ("superres", "superres/pytorch_super_resolution.onnx", dict(size="224,224", channels="gray")),
    ("fastestdet", "fastestdet/FastestDet.onnx", dict(size="352,352", channels="bgr")),
    ("resnet20", "cifar10-resnet20/resnet20_cifar10_pre.onnx",
     dict(size="32,32", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")),
])
def test_fidelity_gains_on_real_models(tmp_path, name, rel, spec):
    from onnx_dc.data.calib import parse_calib_spec

    model = require(REAL / rel)
    h, w = (int(v) for v in spec["size"].split(","))
    folder = write_folder(tmp_path / name, 20, (h + 16, w + 16), seed=3, suffix=".jpg")
    calib = parse_calib_spec(f"images:{folder}", **spec)
    free = onnx_dc.compress(model, None, sparse_ratio=0.5, class_num=32)
    aware = onnx_dc.compress(model, None, sparse_ratio=0.5, class_num=32, calib=calib)
    free_fid = fidelity(free.model, model, calib)
    assert aware.fidelity.samples == free_fid.samples == 4
    for a, f in zip(aware.fidelity.outputs, free_fid.outputs):
        assert a.rel_l2 < f.rel_l2, (name, a, f)
        assert a.cosine >= f.cosine
