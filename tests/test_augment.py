"""Training-time translation of image inputs (train.shift)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_dc.errors import ConfigError
from onnx_dc.train.augment import random_shift
from onnx_dc.train.settings import resolve_train_settings


def test_random_shift_moves_each_image_within_its_bound():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 1, 28, 28), np.float32)
    x[:, 0, 10:18, 12:16] = np.arange(1, 33, dtype=np.float32).reshape(8, 4)  # a patch away from the border
    out = random_shift(x, 2, np.random.default_rng(3))
    moves = set()
    for k in range(len(x)):
        ys, xs = np.nonzero(out[k, 0])
        dy, dx = ys.min() - 10, xs.min() - 12
        assert abs(dy) <= 2 and abs(dx) <= 2
        np.testing.assert_array_equal(out[k, 0, 10 + dy:18 + dy, 12 + dx:16 + dx], x[k, 0, 10:18, 12:16])
        assert out[k].sum() == x[k].sum()  # nothing lost, nothing added
        moves.add((dy, dx))
    assert len(moves) > 10  # the moves differ between samples
    again = random_shift(x, 2, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)  # seeded: same moves
    assert random_shift(x, 0, rng) is x


def test_random_shift_channels_last_moves_the_spatial_axes():
    x = np.zeros((8, 6, 6, 3), np.float32)
    x[:, 2:4, 2:4, :] = 1.0
    out = random_shift(x, 1, np.random.default_rng(0), channels_last=True)
    assert out.shape == x.shape
    for k in range(8):
        assert np.all(out[k].sum(axis=(0, 1)) == 4.0)  # every channel keeps its 2x2 patch
        np.testing.assert_array_equal(out[k, ..., 0], out[k, ..., 2])


def test_shift_setting_is_checked():
    assert resolve_train_settings({"shift": 2}).shift == 2
    assert resolve_train_settings({}).to_dict()["shift"] == 0
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ConfigError, match="shift"):
            resolve_train_settings({"shift": bad})


def test_shift_refuses_inputs_that_are_not_images():
    from conftest import mlp_model

    from onnx_dc.api import prepare
    from onnx_dc.train.forms import TrainForm
    from onnx_dc.train.loop import fit

    state = prepare(mlp_model(sizes=(64, 16, 10)), {"defaults": {"sparse_ratio": 0.5}})
    settings = resolve_train_settings({"epochs": 1})
    x, y = np.zeros((8, 64), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ConfigError, match="shift: 2 moves images"):
        fit(state, TrainForm.MASKED, x, y, settings.retrain, shift=2)


def test_label_free_fine_tuning_refuses_shift():
    import onnx_dc
    from conftest import mlp_model

    with pytest.raises(ConfigError, match="shift"):
        onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8, calib="digits", epochs=1,
                         schedule={"shift": 1})
