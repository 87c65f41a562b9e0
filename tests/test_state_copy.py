"""A layer's state copies itself whole: a field added to LayerState survives every copy the pipeline makes.

The fields are those of a LayerState subclass with one more field (``note``), put in place of
LayerState where CompressionState.start builds the layers, so the real passes, the real
share_again and the real fine-tuning snapshot run on it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pytest
from conftest import mlp_model, needs_training

from onnx_dc import calibrate
from onnx_dc.api import prepare
from onnx_dc.passes import state as state_module
from onnx_dc.passes.state import LayerState

ARRAYS = ("weights", "mask", "codebook", "codes")


@dataclass
class NotedLayer(LayerState):
    """LayerState with a field the copying code has never heard of."""

    note: str = "planned"


@pytest.fixture
def noted(monkeypatch):
    """Layers built by CompressionState.start are NotedLayer."""
    monkeypatch.setattr(state_module, "LayerState", NotedLayer)


def calibrated(sparse_ratio: float = 0.5, class_num: int = 8):
    """An MLP compressed by the data-aware passes on the built-in digits samples, and the run."""
    state = prepare(mlp_model(sizes=(64, 32, 10)), sparse_ratio=sparse_ratio, class_num=class_num)
    run = calibrate.run_calibrated(state, calibrate.start_calib(state, "digits", None))
    return state, run


def frozen(layer: LayerState) -> dict:
    """Copies of a layer's arrays and values, to compare with later."""
    return {f.name: (getattr(layer, f.name).copy() if f.name in ARRAYS and getattr(layer, f.name) is not None
                     else getattr(layer, f.name)) for f in fields(layer)}


def assert_holds(layer: LayerState, values: dict) -> None:
    for name, want in values.items():
        got = getattr(layer, name)
        if name in ARRAYS and want is not None:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert got == want, name


def test_copy_and_assign_carry_every_field_including_one_added_later(noted):
    state, _ = calibrated()
    layer = state.layers["w0"]
    assert isinstance(layer, NotedLayer)
    layer.note = "shared"
    copy = layer.copy()
    assert type(copy) is NotedLayer and copy is not layer
    assert all(getattr(copy, f.name) is getattr(layer, f.name) for f in fields(layer))
    other = state.layers["w1"]
    before = frozen(other)
    other.assign(copy)
    assert all(getattr(other, f.name) is getattr(layer, f.name) for f in fields(layer))
    other.assign(NotedLayer(**before))
    assert_holds(other, before)


def test_a_copy_keeps_its_values_while_the_passes_run_on_the_layer():
    """Copies share the arrays: this holds because no pass writes into a layer's arrays, it gives the layer new ones."""
    state = prepare(mlp_model(sizes=(64, 32, 10)), sparse_ratio=0.5, class_num=8)
    copies = {n: layer.copy() for n, layer in state.layers.items()}
    values = {n: frozen(layer) for n, layer in state.layers.items()}
    run = calibrate.run_calibrated(state, calibrate.start_calib(state, "digits", {"gptq": True}))
    for name, copy in copies.items():
        assert state.layers[name].codebook is not None
        assert_holds(copy, values[name])
    again = {n: layer.copy() for n, layer in state.layers.items()}
    values = {n: frozen(layer) for n, layer in state.layers.items()}
    calibrate.share_again(state, run)
    for name, copy in again.items():
        assert_holds(copy, values[name])


def test_share_again_brings_back_every_field_of_the_fresh_layers(noted, monkeypatch):
    """share_again runs the data-aware passes on a fresh state; what they set on its layers, a field added to
    LayerState included, goes back into the state."""
    state, run = calibrated()
    masks = {n: layer.mask.copy() for n, layer in state.layers.items()}
    passes = calibrate.compress_layer
    seen = []

    def compress_and_note(fresh, name, *args):
        passes(fresh, name, *args)
        fresh.layers[name].note = f"shared again ({fresh.layers[name].codebook.size} entries)"
        seen.append(name)

    monkeypatch.setattr(calibrate, "compress_layer", compress_and_note)
    calibrate.share_again(state, run)
    assert sorted(seen) == sorted(state.layers)
    for name, layer in state.layers.items():
        assert layer.note == "shared again (9 entries)"
        np.testing.assert_array_equal(layer.mask, masks[name])
        np.testing.assert_array_equal(layer.weights, layer.codebook[layer.codes])


@needs_training
def test_fine_tuning_that_restores_its_start_restores_every_field(noted):
    """keep_better: a fine-tuning that ends worse on validation restores the snapshot taken before it, every
    field of every layer (an added one too) and the exact arrays it started from."""
    from onnx_dc.train.distill import distill
    from onnx_dc.train.settings import resolve_train_settings

    state, run = calibrated()
    for layer in state.layers.values():
        layer.note = "data-aware"
    start = {n: frozen(layer) for n, layer in state.layers.items()}

    def wreck(s, step):  # prunes most of every layer: fine-tuning cannot recover, so the start comes back
        for layer in s.layers.values():
            layer.mask = layer.mask & (np.abs(layer.weights) >= np.quantile(np.abs(layer.weights), 0.97))
            layer.weights = layer.weights * layer.mask
            layer.note = "wrecked"
        return True

    schedule = resolve_train_settings({"epochs": 1, "batch_size": 16})
    result = distill(state, run.data.calib, schedule, teacher=mlp_model(sizes=(64, 32, 10)), prune_step=wreck,
                     keep_better=True)
    assert result.restored
    for name, layer in state.layers.items():
        assert_holds(layer, start[name])
