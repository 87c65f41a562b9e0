"""Everyday use, round two: sizes, scales and suggestions that went wrong without a word. Each item of the
issue has tests named after it.

Every command runs for real (onnxruntime, the models in models/ and ../shared/data). Where a check must come
before the work, the folder holds files that are not images: reading any of them would fail with another
message, so the expected message shows that nothing was decoded (and a broken check fails, never allocates).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from calib_images import write_folder
from conftest import ROOT, SHARED_DATA, finish_model, init, shared_path
from test_everyday import cli, user_error
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc
from onnx_dc.analysis.curves import load_sensitivity
from onnx_dc.analysis.metrics import Accuracy
from onnx_dc.analysis.target import measure_suggestion
from onnx_dc.data.calib import MAX_IMAGE_SIDE, READ_PEAK, auto_limit, load_calib, parse_calib_spec
from onnx_dc.data.datasets import Preprocess, load_dataset
from onnx_dc.data.memory import available_bytes
from onnx_dc.errors import DataError
from onnx_dc.graph.io import write_model

LENET5 = ROOT / "models" / "lenet5.onnx"
FASTESTDET = SHARED_DATA / "real" / "fastestdet" / "FastestDet.onnx"




def not_images(folder: Path, n: int) -> Path:
    """``n`` files named like PNG images that hold text: decoding any of them fails."""
    folder.mkdir()
    for i in range(n):
        (folder / f"img_{i:04d}.png").write_text("not an image")
    return folder


@pytest.fixture
def dynamic_hw(tmp_path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> MatMul on an N x 3 x H x W input (any height and width)."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
             oh.make_node("Flatten", ["g"], ["f"], name="flat"),
             oh.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    graph = oh.make_graph(nodes, "dynamic_hw", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [init("w", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
                           init("fc", rng.normal(0, 0.3, (8, 5)).astype(np.float32))])
    path = tmp_path / "dynamic_hw.onnx"
    write_model(finish_model(graph), path)
    return path


# ----------------------------------------------------------------------------- 4. --size against the model and memory

def test_round2_item4_size_against_a_fixed_input_is_refused_before_any_image_is_read(capsys, tmp_path):
    model = shared_path(FASTESTDET)
    folder = not_images(tmp_path / "photos", 6)
    err = user_error(capsys, "compress", model, "-o", tmp_path / "out.dc.onnx", "--calib", f"images:{folder}",
                     "--size", "100000,100000")
    assert "--size 100000,100000" in err and "'input.1' expects 352x352 (HxW, fixed" in err, err
    assert err.rstrip().endswith("pass --size 352,352"), err
    assert not (tmp_path / "out.dc.onnx").exists()
    # the size the message asks for gets past the check: then the (unreadable) files are read
    err = user_error(capsys, "compress", model, "-o", tmp_path / "out.dc.onnx", "--calib", f"images:{folder}",
                     "--size", "352,352")
    assert "cannot read this image" in err, err


def test_round2_item4_size_over_the_side_limit_is_refused(capsys, tmp_path, dynamic_hw):
    folder = not_images(tmp_path / "photos", 3)
    side = MAX_IMAGE_SIDE + 1
    err = user_error(capsys, "compress", dynamic_hw, "-o", tmp_path / "out.dc.onnx", "--calib", f"images:{folder}",
                     "--size", f"64,{side}")
    assert f"--size 64,{side} is over {MAX_IMAGE_SIDE} pixels a side" in err, err


def test_round2_item4_samples_that_do_not_fit_in_memory_are_refused_before_reading(capsys, tmp_path, dynamic_hw):
    # 256 calibration + 200 held-out samples of 3 x 16384 x 16384 float32: 1.5 TB, on no machine's free memory
    folder = not_images(tmp_path / "photos", 1000)
    side = MAX_IMAGE_SIDE
    err = user_error(capsys, "compress", dynamic_hw, "-o", tmp_path / "out.dc.onnx", "--calib", f"images:{folder}",
                     "--size", f"{side},{side}")
    assert f"256 calibration + 200 held-out samples of 3x{side}x{side} take 1.5 TB as float32" in err, err
    assert re.search(r"but [\d.]+ [kMGT]?B of memory is available; pass a smaller --size$", err.rstrip()), err


def test_round2_item4_the_memory_message_names_a_calib_limit_that_fits(capsys, tmp_path, dynamic_hw):
    # a side at which about 4 samples fit the free memory (at most the largest side allowed)
    side = min(MAX_IMAGE_SIDE, int(np.sqrt(available_bytes() / (4 * READ_PEAK * 4 * 3))))
    sample = 4 * 3 * side**2
    fit = available_bytes() // (READ_PEAK * sample)  # samples whose reading fits the free memory now
    n = 2 * fit + 2  # every fifth held out (fewer than fit), the rest chosen: about twice too many
    folder = not_images(tmp_path / "photos", n)
    err = user_error(capsys, "compress", dynamic_hw, "-o", tmp_path / "out.dc.onnx", "--calib", f"images:{folder}",
                     "--size", f"{side},{side}")
    held = n // 5
    assert f"{min(n - held, auto_limit(sample))} calibration + {held} held-out samples" in err, err
    limit = int(re.search(r"or --calib-limit (\d+)$", err.rstrip()).group(1))
    assert 1 <= limit < min(n - held, auto_limit(sample))
    assert (limit + held) * READ_PEAK * sample <= 1.1 * available_bytes()  # free memory moves a little meanwhile


def test_round2_item4_a_dynamic_input_takes_size_or_the_images_own_size(capsys, tmp_path, dynamic_hw):
    from PIL import Image

    folder = write_folder(tmp_path / "photos", 11, (60, 80), seed=3)
    model = onnx.load(dynamic_hw)
    resized = load_calib(parse_calib_spec(f"images:{folder}", size="48,64", limit=2), model)
    assert (len(resized.calib), len(resized.heldout)) == (2, 2)
    assert resized.sample_shapes() == {"x": (1, 3, 48, 64)}
    # the held-out samples are every fifth image (img_004, img_009), read and resized as documented
    for got, index in zip(resized.heldout.arrays["x"], (4, 9)):
        with Image.open(folder / f"img_{index:03d}.png") as img:
            want = np.asarray(img.convert("RGB").resize((64, 48), Image.BILINEAR), np.float32) * np.float32(1 / 255)
        np.testing.assert_array_equal(got[0], want.transpose(2, 0, 1))
    own = load_calib(parse_calib_spec(f"images:{folder}"), model)
    assert own.sample_shapes() == {"x": (1, 3, 60, 80)} and (len(own.calib), len(own.heldout)) == (9, 2)
    code, out, err = cli(capsys, "compress", dynamic_hw, "-o", tmp_path / "out.dc.onnx", "--class-num", "16",
                         "--calib", f"images:{folder}", "--size", "48,64")
    assert code == 0, err
    assert "9 calibration + 2 held-out samples" in out, out


# ----------------------------------------------------------------------------- 6. data already scaled

@pytest.fixture
def mnist_npz(tmp_path, mnist_dir):
    """The first 2000 MNIST test images as an npz: raw pixels (uint8), and scaled to [0, 1] (float32)."""
    test = load_dataset(f"mnist:{mnist_dir}", "test")
    x, y = test.images[:2000, ..., 0], test.labels[:2000]
    raw, scaled = tmp_path / "raw.npz", tmp_path / "scaled.npz"
    np.savez(raw, x=x, y=y)
    np.savez(scaled, x=(x / 255.0).astype(np.float32), y=y)
    return raw, scaled


def test_round2_item6_data_already_scaled_against_a_1_255_scale_is_refused(capsys, mnist_npz):
    raw, scaled = mnist_npz
    assert any(p.key == "onnx_dc.preprocess" and '"scale": 0.00392156' in p.value
               for p in onnx.load(LENET5).metadata_props)  # the model's metadata says x * 1/255
    err = user_error(capsys, "eval", LENET5, "--data", f"npz:{scaled}")
    assert f"npz:{scaled}: every value is in [0, 1]" in err and "model's metadata" in err, err
    assert err.rstrip().endswith("the data looks already scaled; pass --scale 1"), err
    with pytest.raises(DataError, match="already scaled"):
        onnx_dc.evaluate(LENET5, f"npz:{scaled}")

    # what the message says to pass, and raw pixels with the model's own scale, give the same accuracy
    results = []
    for argv in (("--data", f"npz:{scaled}", "--scale", "1"), ("--data", f"npz:{raw}")):
        code, out, err = cli(capsys, "eval", LENET5, *argv, "--json")
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0]["accuracy"] > 0.97
    assert results[0]["correct"] == results[1]["correct"]
    # a scale given through the API is respected as well
    assert onnx_dc.evaluate(LENET5, f"npz:{scaled}", Preprocess(scale=1.0)).correct == results[0]["correct"]


# ----------------------------------------------------------------------------- 10. per-layer drops add up

def test_round2_item10_sensitivity_measures_its_suggestion_and_warns_when_drops_add_up(capsys, tmp_path, mnist8,
                                                                                         mnist_dir):
    data, saved, config = f"mnist:{mnist_dir}", tmp_path / "sens.json", tmp_path / "suggested.yaml"
    code, out, err = cli(capsys, "sensitivity", mnist8, "--data", data, "--limit", "500", "--max-drop", "1",
                         "--json", saved, "--config-out", config)
    assert code == 0, err
    measured = json.loads(saved.read_text())["suggested_measured"]
    assert measured["baseline"] - measured["score"] == pytest.approx(measured["drop"])
    # the per-layer drops within 1 add up to far more on the whole model
    assert measured["drop"] > 1 and measured["exceeds_max_drop"] is True
    assert (f"suggested settings together, measured: {measured['score']:.2f}% (baseline {measured['baseline']:.2f}%, "
            f"drop {measured['drop']:.2f}") in out
    warning = next(line for line in out.splitlines() if line.startswith("warning: "))
    assert "add up" in warning and "--max-drop 1" in warning

    # the measured score is that of the suggested config, compressed and evaluated by the commands
    compressed = tmp_path / "suggested.dc.onnx"
    code, _, err = cli(capsys, "compress", mnist8, "-o", compressed, "--config", config)
    assert code == 0, err
    code, out_eval, err = cli(capsys, "eval", compressed, "--data", data, "--limit", "500", "--json")
    assert code == 0, err
    assert 100 * json.loads(out_eval)["accuracy"] == pytest.approx(measured["score"], abs=1e-9)

    # the command the warning names finds settings within a total drop of 1, from the saved sweep
    command = shlex.split(warning.split("for a total drop of at most 1: ", 1)[1])
    assert command[:2] == ["onnx-dc", "compress"] and "--target-drop" in command and "--sensitivity" in command
    target_out = tmp_path / "target.dc.onnx"
    code, out_target, err = cli(capsys, *[str(target_out) if a == "OUT.dc.onnx" else a for a in command[1:]], "--json")
    assert code == 0, err
    assert json.loads(out_target)["target"]["rounds"][-1]["measured"] <= 1

    # within a generous budget the whole model stays within it, and nothing is said
    sens = load_sensitivity(saved)
    generous = measure_suggestion(str(mnist8), sens, 100.0, Accuracy(data, None, "test", 500))
    assert generous is not None and not generous.exceeds
