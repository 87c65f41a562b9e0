"""Data specs, preprocessing, and top-1 accuracy in onnxruntime."""

from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest
from conftest import FASHION_DIR, MNIST_DIR, finish_model, init, needs_shared
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc
from onnx_dc.data.datasets import METADATA_KEY, DataSpec, Preprocess, load_dataset, parse_data_spec
from onnx_dc.errors import DataError
from onnx_dc.passes.lower import set_metadata


def linear_probe(sample_shape, batch="N", classes=10, pixels=None, seed=0) -> onnx.ModelProto:
    """Flatten -> MatMul -> logits, whose input has ``sample_shape``; weights from a least-squares fit."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(sample_shape))
    w = rng.normal(size=(features, classes)).astype(np.float32) if pixels is None else pixels
    nodes = [oh.make_node("Flatten", ["x"], ["f"], name="flat"), oh.make_node("MatMul", ["f", "w"], ["y"], name="fc")]
    g = oh.make_graph(nodes, "probe", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *sample_shape])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], [init("w", w)])
    return finish_model(g)


def fitted_probe(data, sample_shape, prep, batch="N"):
    """A linear classifier fitted (least squares on one-hot labels) on the train split."""
    train = load_dataset(data, "train")
    x = prep.apply(train.images[:3000], None).reshape(3000, -1)
    onehot = np.eye(10)[train.labels[:3000]]
    w, *_ = np.linalg.lstsq(np.c_[x], onehot, rcond=None)
    return linear_probe(sample_shape, batch, pixels=w.astype(np.float32))


def test_parse_specs():
    assert parse_data_spec("mnist:/d").kind == "mnist" and parse_data_spec("digits").path is None
    assert parse_data_spec("fashion-mnist:/x").path == "/x" and parse_data_spec("npz:f.npz").kind == "npz"
    for bad in ("cifar:/x", "npz", "npz:", "digits:/x"):
        with pytest.raises(DataError):
            parse_data_spec(bad)
    # without a folder: the fetched cache (tests/test_fetch.py)
    assert parse_data_spec("mnist:") == parse_data_spec("mnist") == DataSpec("mnist")
    assert str(parse_data_spec("fashion-mnist:")) == "fashion-mnist"


def test_preprocess_layouts_and_metadata():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    nchw = Preprocess(scale=0.5, mean=1.0, std=2.0).apply(images, None)
    assert nchw.shape == (2, 3, 4, 4) and nchw[0, 1, 0, 0] == pytest.approx((1 * 0.5 - 1.0) / 2.0)
    assert Preprocess(layout="nhwc").apply(images, (48,)).shape == (2, 48)
    p = Preprocess(scale=1 / 255, mean=0.1307, std=0.3081, layout="nhwc")
    assert Preprocess.from_metadata(p.to_metadata()) == p
    with pytest.raises(DataError, match="does not fit"):
        Preprocess().apply(images, (5,))
    with pytest.raises(DataError):
        Preprocess(layout="chw")


def test_digits_npz_and_idx_files(tmp_path):
    digits = load_dataset("digits", "test")
    assert digits.images.shape[1:] == (8, 8, 1) and len(digits) + len(load_dataset("digits", "train")) == 1797
    np.savez(tmp_path / "d.npz", x=digits.images[..., 0], y=digits.labels)
    npz = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert npz.images.shape == digits.images.shape and (npz.labels == digits.labels).all()
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays x and y"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    # a tiny IDX pair, written by hand
    (tmp_path / "idx").mkdir()
    img = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(range(8))
    lab = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 4])
    for split in ("t10k", "train"):
        (tmp_path / "idx" / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
        (tmp_path / "idx" / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
    ds = load_dataset(f"mnist:{tmp_path / 'idx'}")
    assert ds.images.shape == (2, 2, 2, 1) and ds.labels.tolist() == [3, 4]
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab[:-1]))
    with pytest.raises(DataError, match="header says"):
        load_dataset(f"mnist:{tmp_path / 'idx'}")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"mnist:{tmp_path / 'nowhere'}")


@needs_shared
@pytest.mark.parametrize("kind,folder", [("mnist", MNIST_DIR), ("fashion-mnist", FASHION_DIR)])
def test_real_idx_data(kind, folder):
    test = load_dataset(f"{kind}:{folder}")
    assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).min() >= 800


@needs_shared
def test_eval_batch_fixed_or_free_nchw_or_nhwc_and_metadata_reuse(tmp_path):
    data = f"mnist:{MNIST_DIR}"
    prep = Preprocess(scale=1 / 255)
    free = fitted_probe(data, (1, 28, 28), prep)
    fixed = fitted_probe(data, (1, 28, 28), prep, batch=1)
    nhwc = fitted_probe(data, (28, 28, 1), Preprocess(scale=1 / 255, layout="nhwc"))
    a = onnx_dc.evaluate(free, data, prep, limit=2000)
    b = onnx_dc.evaluate(fixed, data, prep, limit=2000)
    c = onnx_dc.evaluate(nhwc, data, Preprocess(scale=1 / 255, layout="nhwc"), limit=2000)
    assert a.correct == b.correct == c.correct and a.accuracy > 0.7  # a least-squares linear probe on MNIST
    set_metadata(free, {METADATA_KEY: Preprocess(scale=1 / 255).to_metadata()})
    assert onnx_dc.evaluate(free, data, limit=2000).preprocess.scale == pytest.approx(1 / 255)
    set_metadata(free, {METADATA_KEY: Preprocess(scale=1.0).to_metadata()})
    assert onnx_dc.evaluate(free, data, limit=2000).preprocess.scale == 1.0  # the stored value wins over defaults
