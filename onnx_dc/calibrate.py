"""Compression with unlabeled samples: load and check them, run the data-aware passes, measure fidelity.

The orchestration behind ``onnx_dc.compress(..., calib=...)`` and ``onnx_dc.fidelity(...)``;
the passes themselves live in :mod:`onnx_dc.passes` and the measurements in :mod:`onnx_dc.runtime`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dc import progress
from onnx_dc.data.calib import CalibData, CalibSpec, as_calib_spec, load_calib, model_inputs
from onnx_dc.data.datasets import DataSpec, Preprocess, load_dataset
from onnx_dc.errors import DataError, ModelError
from onnx_dc.formats.models import load_model, model_bytes
from onnx_dc.graph import external
from onnx_dc.passes.data_aware import (DataAwareResult, DataAwareSettings, compress_layer, compress_plain,
                                       layer_error, original_weights, parse_data_aware, run_data_aware)
from onnx_dc.passes.state import CompressionState
from onnx_dc.runtime.collect import Collected, Collector
from onnx_dc.runtime.fidelity import (Fidelity, compare_outputs, mean_error, measure_fidelity, record_outputs,
                                      responsible_layers)
from onnx_dc.runtime.session import InferenceSession

log = logging.getLogger(__name__)

ATTRIBUTION_SAMPLES = 32
ATTRIBUTION_LAYERS = 8  # layers measured by putting them back to dense, chosen by their own output error
NOT_CHECKED = ("accuracy not checked: compress ran without samples or labels; measure it with "
               "`onnx-dc eval {out} --against {model} --calib images:DIR` (or npz:FILE), or with labels "
               "`onnx-dc eval {out} --data SPEC`; compress with --calib (data-aware passes) or --data (fine-tuning)")
NOT_HELD_OUT = ("accuracy not checked: --calib gave {n} sample(s), all used by the passes and none held out; give "
                "more (every fifth is held out), or measure with `onnx-dc eval {out} --against {model} --calib ...` "
                "on other samples")


@dataclass(frozen=True)
class CalibRun:
    """What the data-aware path did."""

    data: CalibData
    settings: DataAwareSettings
    collected: Collected | None
    result: DataAwareResult | None
    superseded: str | None = None  # why the compressed model is not the data-aware passes' result
    blocks: Any = None  # onnx_dc.train.blocks.BlockResult: what block reconstruction did (calib: blocks)

    def to_dict(self) -> dict[str, Any]:
        """Plain values: the samples, the settings, what each pass changed, collection time."""
        out = {"calib": self.data.summary(), "settings": self.settings.to_dict(), "superseded": self.superseded}
        if self.result is not None:
            out.update(self.result.to_dict())
        if self.collected is not None:
            out["collect_seconds"] = round(self.collected.seconds, 3)
        if self.blocks is not None:
            out["blocks"] = self.blocks.to_dict()
        return out


def start_calib(state: CompressionState, calib: CalibSpec | str, raw_settings: Mapping[str, Any] | None,
                data: DataSpec | str | None = None, preprocess: Preprocess | None = None) -> CalibRun:
    """Read the samples and the ``calib:`` settings before any work (bad input fails here)."""
    settings = parse_data_aware(raw_settings)
    loaded = load_calib(as_calib_spec(calib), state.model)
    if data is not None:
        check_data_agrees(loaded, data, preprocess)
    return CalibRun(loaded, settings, None, None)


def check_data_agrees(calib: CalibData, data: DataSpec | str, preprocess: Preprocess | None) -> None:
    """``--calib`` and ``--data`` must give samples of one shape for the model's input."""
    dataset = load_dataset(data, "test")
    prep = preprocess or Preprocess(scale=dataset.default_scale)
    laid = prep.apply(dataset.images[:1], None)
    shapes = calib.sample_shapes()
    if len(shapes) != 1:
        raise DataError(f"--data {data} feeds one input but --calib {calib.source} feeds {len(shapes)}")
    name, shape = next(iter(shapes.items()))
    if int(np.prod(laid.shape[1:])) != int(np.prod(shape[1:])) or (
            len(laid.shape) == len(shape) and tuple(laid.shape[1:]) != tuple(shape[1:])):
        raise DataError(f"--data {data} gives samples of shape {'x'.join(map(str, laid.shape[1:]))} but --calib "
                        f"{calib.source} gives {'x'.join(map(str, shape[1:]))} for input {name!r}; "
                        "give both for the same input size")


def run_calibrated(state: CompressionState, run: CalibRun) -> CalibRun:
    """Collect statistics on the calibration part and run the data-aware passes on ``state``.

    With ``sequential`` (the default) the layers go in waves (:meth:`Collector.waves`): each
    wave's statistics are measured on the model whose earlier waves are already compressed,
    paired with the original model's, then the wave is compressed. Layers without statistics
    are compressed the data-free way first, so the waves see them compressed too. Every tenth
    wave, and the last, is logged (DEBUG: the passes draw their own progress bar).
    """
    start = time.perf_counter()
    settings = run.settings
    collector = Collector(state, run.data.calib, settings.batch_size, settings.full_hessian_max_dim,
                          carry_bytes=settings.carry_mb << 20)
    if not settings.sequential:
        stats = collector.collect()
        result = run_data_aware(state, stats, settings, collector.unsupported)
    else:
        result = DataAwareResult(without_stats=dict(collector.unsupported))
        for name in collector.unsupported:
            compress_plain(state.layers[name])
        stats = {}
        waves = collector.waves()
        for i, wave in enumerate(progress.bar(waves, desc="data-aware", unit="wave")):
            wave_stats = collector.collect(wave, {n: layer.weights for n, layer in state.layers.items()}, carry=True)
            for name in wave:
                compress_layer(state, name, wave_stats[name], settings, result)
            stats.update(wave_stats)
            if i + 1 == len(waves) or (i + 1) % 10 == 0:
                log.debug("data-aware: wave %d/%d (%d layer(s)) in %.1f s", i + 1, len(waves), len(stats),
                          time.perf_counter() - start)
        result.waves = len(waves)
    collected = Collected(stats, collector.unsupported, time.perf_counter() - start, len(run.data.calib))
    return CalibRun(run.data, settings, collected, result)


def original_model(state: CompressionState, result: DataAwareResult) -> onnx.ModelProto:
    """The original model of a state the data-aware passes compressed: a copy of ``state.model`` (which keeps
    the original weights) with the bias entries bias correction moved put back (the teacher of block
    reconstruction, config ``calib: blocks``, :func:`onnx_dc.pipeline.blocks`)."""
    out = onnx.ModelProto()
    out.CopyFrom(state.model)
    external.embed_all(out)
    inits = {t.name: t for t in out.graph.initializer}
    for bias, rows, values in reversed(list(result.original_biases.values())):  # the earliest correction last
        arr = numpy_helper.to_array(inits[bias]).copy()
        arr.flat[rows] = values
        inits[bias].CopyFrom(numpy_helper.from_array(arr, bias))
    return out


def share_again(state: CompressionState, run: CalibRun) -> DataAwareResult:
    """The data-aware passes again on ``state``'s present weights (after retraining in the masked form).

    The retrained model takes the original's place: each layer's statistics are measured as
    :func:`run_calibrated` measures them, on a fresh state started from ``state``'s dense model,
    and the passes aim at the retrained layers' outputs. The fresh layers start from ``state``'s
    masks (pruning only narrows a mask it is given); pruned weights are exact zeros and pruning
    removes zeros first, so a ratio-pruned row keeps its mask exactly. The new masks, codebooks,
    codes and the biases bias correction moved go back into ``state``; its planned initializers
    (the original weights, which fidelity attribution reads) stay.
    """
    fresh = CompressionState.start(state.dense_model(), state.plan, state.source_bytes)
    fresh.keep_originals()  # before the masks: it refuses a state that any pass has touched
    for name, layer in fresh.layers.items():
        layer.mask = state.layers[name].mask
    again = run_calibrated(fresh, CalibRun(run.data, run.settings, None, None)).result
    for name, layer in fresh.layers.items():
        state.layers[name].assign(layer)
    moved = {bias for bias, _, _ in again.original_biases.values()}
    corrected = {t.name: t for t in fresh.model.graph.initializer if t.name in moved}
    for t in state.model.graph.initializer:
        if t.name in corrected:
            t.CopyFrom(corrected[t.name])
    return again


def run_with_stats(state: CompressionState, stats: Mapping[str, Any], settings: DataAwareSettings) -> DataAwareResult:
    """The data-aware passes on ``state`` with statistics collected before (those of its planned layers only).

    Statistics collected once for every layer serve any state holding a subset of them: a
    layer's statistics depend on the original model's activations only.
    """
    state.keep_originals()
    return run_data_aware(state, {n: st for n, st in stats.items() if n in state.layers}, settings)


def fidelity_of(original: onnx.ModelProto | bytes, compressed: onnx.ModelProto, state: CompressionState,
                run: CalibRun) -> Fidelity | None:
    """Fidelity on the held-out samples; when poor, with the layers most responsible."""
    held = run.data.heldout
    if len(held) == 0:
        return None
    batch = run.settings.batch_size
    reference = InferenceSession(model_bytes(original), spin=False)
    fid = Fidelity(tuple(compare_outputs(reference, model_bytes(compressed), held, batch)), len(held), run.data.source)
    if not fid.poor():
        return fid
    few = held.take(slice(0, ATTRIBUTION_SAMPLES))
    recorded = record_outputs(reference, few, batch)  # the original runs once for every candidate
    originals = _original_values(original, state)
    names = _candidates(state, run, originals)
    biases = run.result.original_biases if run.result is not None else {}
    probe_model = state.dense_model()
    _overridable(probe_model, set(names) | {biases[n][0] for n in names if n in biases})
    probe_bytes = model_bytes(probe_model)
    del probe_model  # one copy of the weights at a time: the proto, then its bytes, then the session's
    probe = InferenceSession(probe_bytes, spin=False, decode=False)
    del probe_bytes
    total = mean_error(compare_outputs(recorded, probe, few, batch))
    variants = ((name, _originals(state, name, biases, originals)) for name in names)
    culprits = responsible_layers(recorded, probe, variants, few, total, batch_size=batch)
    return Fidelity(fid.outputs, fid.samples, fid.source, culprits, ranked=True,
                    names={n: state.layers[n].label for n, _ in culprits})


def _original_values(original: onnx.ModelProto | bytes, state: CompressionState):
    """``name -> the planned weight's original values``: from ``state.model`` when it keeps them (the
    data-aware passes), else from the original model (fine-tuning with labels, or ``start: both``
    keeping the magnitude-pruned start, dropped them)."""
    if state.originals_kept:
        return lambda name: original_weights(state, name)
    proto = original if isinstance(original, onnx.ModelProto) else load_model(original)
    inits = {t.name: t for t in proto.graph.initializer if t.name in state.layers}
    return lambda name: numpy_helper.to_array(inits[name]).astype(np.float32, copy=False)


def _originals(state: CompressionState, name: str, biases: Mapping[str, tuple], originals) -> dict[str, np.ndarray]:
    """The feeds that put layer ``name`` back to its original form: its weight, and its bias with the
    entries bias correction moved for it restored (``biases``: ``DataAwareResult.original_biases``)."""
    out = {name: originals(name)}
    if name in biases:
        bias, rows, values = biases[name]
        arr = numpy_helper.to_array(next(t for t in state.model.graph.initializer if t.name == bias)).copy()
        arr.flat[rows] = values
        out[bias] = arr
    return out


def _overridable(model: onnx.ModelProto, names: set[str]) -> None:
    """List the initializers ``names`` as graph inputs too, so a run can feed other values for them."""
    have = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.name in names and init.name not in have:
            model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def _candidates(state: CompressionState, run: CalibRun, originals) -> list[str]:
    """Layers with the largest relative error at their own output (all layers when few or unmeasured)."""
    names = list(state.layers)
    stats = run.collected.stats if run.collected is not None else {}
    if len(names) <= ATTRIBUTION_LAYERS or not stats:
        return names
    def own_error(name: str) -> float:
        st = stats.get(name)
        if st is None or any(p.stats.hessian() is None for p in st.pieces()):
            return float("inf")  # not measurable here: keep it a candidate
        original = originals(name)
        total = layer_error(np.zeros_like(original), original, st)
        return layer_error(state.layers[name].weights, original, st) / max(total, 1e-30)

    return sorted(names, key=own_error, reverse=True)[:ATTRIBUTION_LAYERS]


def fidelity(model: str | os.PathLike | onnx.ModelProto, against: str | os.PathLike | onnx.ModelProto,
             calib: CalibSpec | str, part: str = "heldout") -> Fidelity:
    """Fidelity of ``model`` against ``against`` (the original) on calibration samples.

    Args:
        model: the model to judge (``.onnx``, ``.dc.onnx``, ``.dcz``).
        against: the reference model.
        calib: the samples (``images:DIR``, ``npz:FILE``, ...).
        part: ``heldout`` (the held-out part) or ``all`` (calibration and held-out parts).
    """
    reference = load_model(against) if not isinstance(against, onnx.ModelProto) else against
    candidate = load_model(model)
    _check_same_inputs(candidate, reference, _name(model), _name(against))
    data = load_calib(as_calib_spec(calib), reference)
    load_calib(as_calib_spec(calib), candidate)  # the same samples fit the candidate's input shapes
    samples = data.heldout if part == "heldout" and len(data.heldout) else _all(data)
    return measure_fidelity(reference, candidate, samples, data.source)


def _name(model: Any) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "model"


def _check_same_inputs(candidate: onnx.ModelProto, reference: onnx.ModelProto, name: str, against: str) -> None:
    """Refuse a pair of models that do not take the same inputs: the same samples cannot feed both."""
    mine, theirs = (tuple(i.name for i in model_inputs(m)) for m in (candidate, reference))
    if set(mine) != set(theirs):  # fed by name: the order does not matter
        raise ModelError(f"{name} does not match the original {against}: its inputs are {', '.join(mine)}, the "
                         f"original's are {', '.join(theirs)}; give the model {name} was compressed from")


def _all(data: CalibData):
    from onnx_dc.data.calib import Samples

    arrays = {k: np.concatenate([v, data.heldout.arrays[k]]) for k, v in data.calib.arrays.items()}
    return Samples(arrays, data.calib.constants, data.calib.stackable)


@dataclass(frozen=True)
class CalibStats:
    """The data-aware settings and every layer's input statistics (plain NumPy arrays), collected once."""

    settings: DataAwareSettings
    stats: dict[str, Any]  # weight name -> onnx_dc.passes.stats.WeightStats


def collect_calib_stats(state: CompressionState, calib: Any, config: Any = None) -> CalibStats:
    """Input statistics of every planned layer of ``state`` on the calibration part of ``calib``.

    The same statistics ``compress(calib=...)`` collects (config ``calib:`` settings);
    ``state`` keeps its original weights (``keep_originals``).
    """
    from onnx_dc.config import as_config
    from onnx_dc.runtime.collect import collect_stats

    run = start_calib(state, calib, as_config(config).calib)
    with progress.quieted():
        collected = collect_stats(state, run.data.calib, batch_size=run.settings.batch_size,
                                  full_max_dim=run.settings.full_hessian_max_dim)
    return CalibStats(run.settings, collected.stats)
