"""Calibration data: specs, image folders, npz files, datasets; the split; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from calib_images import SHARED_PHOTOS, require, write_folder
from conftest import MNIST_DIR, finish_model, init, mlp_model
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.data.calib import (
    Channels, load_calib, model_inputs, parse_calib_spec,
)
from onnx_dc.errors import DataError


def image_model(shape=("N", 3, 24, 32)):
    """Conv over an image input; output [N, 4, H', W']."""
    w = np.random.default_rng(0).normal(0, 0.3, (4, shape[1], 3, 3)).astype(np.float32)
    g = oh.make_graph([oh.make_node("Conv", ["img", "w"], ["y"], name="conv")], "img",
                      [oh.make_tensor_value_info("img", TensorProto.FLOAT, list(shape))],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])], [init("w", w)])
    return finish_model(g)


def two_input_model():
    """y = MatMul(a, w) * scale, with an int64 scalar input that is cast (a constant feed)."""
    w = np.random.default_rng(0).normal(0, 0.3, (8, 4)).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["a", "w"], ["h"], name="fc"),
             oh.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
             oh.make_node("Mul", ["h", "kf"], ["y"])]
    g = oh.make_graph(nodes, "two", [oh.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8]),
                                     oh.make_tensor_value_info("k", TensorProto.INT64, [])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [init("w", w)])
    return finish_model(g)


def test_parse_spec_options():
    spec = parse_calib_spec("images:/tmp/x", size="240,320", channels="bgr", scale=1 / 255,
                            mean="0.485,0.456,0.406", std="0.229,0.224,0.225", limit=10, seed=3)
    assert spec.kind == "images" and spec.path == "/tmp/x" and spec.size == (240, 320)
    assert spec.channels == Channels.BGR and spec.mean == (0.485, 0.456, 0.406) and spec.limit == 10
    assert parse_calib_spec("digits").path is None
    for bad in ("cifar:/x", "images:", "digits:/x"):
        with pytest.raises(DataError):
            parse_calib_spec(bad)
    for kwargs in ({"size": "240"}, {"mean": "a,b"}, {"channels": "rgba"}, {"std": "0"}, {"limit": 0}):
        with pytest.raises(DataError):
            parse_calib_spec("images:/x", **kwargs)


def test_images_fit_split_and_normalize(tmp_path):
    folder = write_folder(tmp_path / "imgs", 12, (24, 32))
    spec = parse_calib_spec(f"images:{folder}", mean="0.5,0.4,0.3", std="0.2,0.25,0.3", limit=5, seed=1)
    data = load_calib(spec, image_model())
    assert len(data.calib) == 5 and len(data.heldout) == 2  # held out: samples 4 and 9 (every fifth)
    x = data.calib.arrays["img"]
    assert x.shape == (5, 1, 3, 24, 32) and x.dtype == np.float32 and data.calib.stackable
    from PIL import Image

    raw = np.asarray(Image.open(folder / "img_004.png").convert("RGB"), np.float32)
    expect = ((raw / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.3]).transpose(2, 0, 1)
    np.testing.assert_allclose(data.heldout.arrays["img"][0, 0], expect, rtol=1e-5, atol=1e-5)
    batches = list(data.calib.batches(2))
    assert [b["img"].shape[0] for b in batches] == [2, 2, 1]
    # same seed, same choice; another seed, another choice; the held-out part never moves
    again = load_calib(spec, image_model())
    np.testing.assert_array_equal(again.calib.arrays["img"], x)
    other = load_calib(parse_calib_spec(f"images:{folder}", limit=5, seed=2, mean="0.5,0.4,0.3",
                                        std="0.2,0.25,0.3"), image_model())
    assert not np.array_equal(other.calib.arrays["img"], x)
    np.testing.assert_array_equal(other.heldout.arrays["img"], data.heldout.arrays["img"])


def test_images_resize_gray_bgr_nhwc(tmp_path):
    folder = write_folder(tmp_path / "imgs", 6, (40, 50), suffix=".jpg")
    gray = load_calib(parse_calib_spec(f"images:{folder}", size="24,32"), image_model(("N", 1, 24, 32)))
    assert gray.calib.arrays["img"].shape[2:] == (1, 24, 32)  # channels picked from the model: gray
    rgb = load_calib(parse_calib_spec(f"images:{folder}", size="24,32", layout="nhwc"), image_model(("N", 24, 32, 3)))
    bgr = load_calib(parse_calib_spec(f"images:{folder}", size="24,32", layout="nhwc", channels="bgr"),
                     image_model(("N", 24, 32, 3)))
    np.testing.assert_array_equal(rgb.calib.arrays["img"][..., ::-1], bgr.calib.arrays["img"])
    # a dynamic H, W takes the image's size
    dyn = load_calib(parse_calib_spec(f"images:{folder}"), image_model(("N", 3, "H", "W")))
    assert dyn.calib.arrays["img"].shape[2:] == (3, 40, 50)


def test_fixed_batch_runs_one_sample_at_a_time(tmp_path):
    folder = write_folder(tmp_path / "imgs", 4, (24, 32))
    data = load_calib(parse_calib_spec(f"images:{folder}"), image_model((1, 3, 24, 32)))
    assert not data.calib.stackable
    assert [b["img"].shape for b in data.calib.batches(64)] == [(1, 3, 24, 32)] * 3


def test_npz_inputs_by_name_and_constants(tmp_path):
    a = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    np.savez(tmp_path / "s.npz", a=a, k=np.array(3, np.int64))
    data = load_calib(f"npz:{tmp_path / 's.npz'}", two_input_model())
    assert len(data.calib) + len(data.heldout) == 20 and data.calib.stackable
    feed = next(data.calib.batches(64))
    assert feed["k"].dtype == np.int64 and feed["k"].shape == () and feed["a"].shape == (len(data.calib), 8)
    # one whole feed per sample (rank + 1)
    np.savez(tmp_path / "f.npz", x=a.reshape(20, 1, 8))
    data = load_calib(f"npz:{tmp_path / 'f.npz'}", mlp_model(sizes=(8, 4)))
    assert data.calib.arrays["x"].shape[1:] == (1, 8)


def test_labeled_datasets_ignore_labels():
    data = load_calib(parse_calib_spec("digits", limit=100), mlp_model())
    assert data.calib.arrays["x"].shape == (100, 1, 64) and len(data.heldout) > 0
    assert data.calib.arrays["x"].max() <= 1.0  # digits' natural scale 1/16
    conv = load_calib(parse_calib_spec("digits", limit=10), conv_model_8x8())
    assert conv.calib.arrays["x"].shape == (10, 1, 1, 8, 8)


def conv_model_8x8():
    w = np.random.default_rng(0).normal(0, 0.3, (2, 1, 3, 3)).astype(np.float32)
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"], name="conv")], "c",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])], [init("w", w)])
    return finish_model(g)


def test_mnist_calibrates_on_train_holds_out_test():
    require(MNIST_DIR)
    from onnx_dc.formats.models import load_model
    from conftest import MNIST8

    data = load_calib(parse_calib_spec(f"mnist:{MNIST_DIR}", limit=64), load_model(require(MNIST8)))
    assert data.calib.arrays["Input3"].shape == (64, 1, 1, 28, 28) and len(data.heldout) == 256


def test_real_photos_into_a_real_detector(tmp_path):
    for p in SHARED_PHOTOS:
        require(p)
    from conftest import SHARED_DATA
    from onnx_dc.formats.models import load_model

    model = load_model(require(SHARED_DATA / "real" / "ultraface" / "version-slim-320.onnx"))
    folder = write_folder(tmp_path / "faces", 5, (344, 450), suffix=".jpg")
    spec = parse_calib_spec(f"images:{folder}", size="240,320", scale=1.0, mean=127, std=128)
    data = load_calib(spec, model)
    assert data.calib.arrays["input"].shape == (4, 1, 3, 240, 320)
    assert model_inputs(model)[0].shape == (1, 3, 240, 320)


# --- bad input: one line naming what is wrong ----------------------------------------------------


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as exc:
        load_calib(f"images:{tmp_path / 'e'}", image_model())
    assert "no images" in one_line(exc)


def test_unreadable_image_is_named(tmp_path):
    folder = write_folder(tmp_path / "imgs", 3, (24, 32))
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError) as exc:
        load_calib(f"images:{folder}", image_model())
    assert "broken.jpg" in one_line(exc)


def test_images_that_do_not_fit(tmp_path):
    folder = write_folder(tmp_path / "imgs", 3, (30, 30))
    with pytest.raises(DataError) as exc:
        load_calib(f"images:{folder}", image_model((1, 3, 24, 32)))
    msg = one_line(exc)
    assert "30x30" in msg and "1x3x24x32" in msg and "--size 24,32" in msg
    with pytest.raises(DataError) as exc:
        load_calib(parse_calib_spec(f"images:{folder}", channels="gray"), image_model((1, 3, 30, 30)))
    assert "3 channel" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_calib(f"images:{folder}", mlp_model())
    assert "not an image batch" in one_line(exc)


def test_npz_without_an_input(tmp_path):
    np.savez(tmp_path / "s.npz", a=np.zeros((4, 8), np.float32))
    with pytest.raises(DataError) as exc:
        load_calib(f"npz:{tmp_path / 's.npz'}", two_input_model())
    assert "'k'" in one_line(exc)
    np.savez(tmp_path / "w.npz", a=np.zeros((4, 9), np.float32), k=np.array(1))
    with pytest.raises(DataError) as exc:
        load_calib(f"npz:{tmp_path / 'w.npz'}", two_input_model())
    assert "4x9" not in one_line(exc) and "1x9" in str(exc.value) and "?x8" in str(exc.value)


def test_default_calib_limit_follows_the_sample_size():
    from onnx_dc.data.calib import auto_limit

    assert auto_limit(4 * 28 * 28) == 1024  # MNIST-sized input: 1024 samples (3 MB)
    assert auto_limit(4 * 3 * 224 * 224) == 256  # 600 KB per sample: the floor
    assert auto_limit(4 * 64 * 64) == 1024 and auto_limit(4 * 3 * 64 * 64) == 341
    assert parse_calib_spec("digits").limit is None and parse_calib_spec("digits", limit=5).limit == 5
