"""Sensitivity analysis: how far each layer alone can be pruned and shared (the paper's Figure 5).

For every compressible layer l and setting s = (sparse_ratio r, class_num k or none), only
W_l is compressed (the prune and share passes, no retraining) and the model is scored by
an evaluation function passed in (accuracy on labels, fidelity on samples, ...):

    drop(l, s)  = score(original) - score(model with W_l -> C_s(W_l))
    bytes(l, s) = stored size of C_s(W_l) in the lowering pass's encoding (float32 when not smaller)

With calibration samples, C_s is the data-aware pass sequence of ``compress(calib=...)``
(prune by |w| x ||x||, reconstruct, weighted k-means, refit, bias correction, as the config's
``calib:`` section says) on W_l alone, from input statistics collected once on the
calibration part; the score is then measured on the held-out part. Without samples C_s is
magnitude pruning and plain k-means. Each point lists the passes that changed the layer.

The settings are every ratio alone, every class_num alone, and every pair. Suggested
settings for a drop budget D: per layer, the measured setting with the fewest bytes whose
drop <= D (each layer on its own; the drops of several layers add up roughly, so
:func:`onnx_dc.analysis.target.measure_suggestion` scores the suggestion on the whole model).

The sweep's results (settings, points, the suggestion) are :mod:`onnx_dc.analysis.curves`;
the evaluation functions :mod:`onnx_dc.analysis.metrics`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from onnx_dc import progress
from onnx_dc.analysis.curves import LayerInfo, Point, Sensitivity, Setting, settings_grid
from onnx_dc.analysis.estimate import anchor_indices, estimate
from onnx_dc.analysis.metrics import Metric, score_and_error
from onnx_dc.analysis.sweep import Runner, run_jobs
from onnx_dc.calibrate import CalibStats, collect_calib_stats
from onnx_dc.config import Codebook
from onnx_dc.errors import ConfigError
from onnx_dc.graph.io import serialize
from onnx_dc.passes.bias_correct import residual_error
from onnx_dc.passes.data_aware import original_weights
from onnx_dc.passes.lower import encode_layer
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.plan import Plan, PlanEntry
from onnx_dc.sweep_grid import (DEFAULT_CLASS_NUMS, DEFAULT_CODEBOOKS, DEFAULT_RATIOS, parse_class_nums,
                                parse_codebooks, parse_ratios)


@dataclass(frozen=True)
class _Context:
    """What every job needs: the normalized model, the plan entries by weight, the evaluation function,
    and the input statistics when the data-aware passes run (sent to each worker once, with the rest)."""

    model: bytes
    entries: dict[str, PlanEntry]
    metric: Metric
    calib: CalibStats | None = None


def measure(ctx: _Context, job: tuple[str, Setting]) -> tuple[float, int, tuple[str, ...], float | None]:
    """Score, stored bytes, passes run and smooth error (None when the metric has none) of the model with one
    layer compressed by one setting (a sweep job)."""
    name, setting = job
    state, passes = _compressed(ctx, name, setting)
    score, error = score_and_error(ctx.metric, state.dense_model())
    return score, stored_bytes(state.layers[name]), passes, error


def measure_layer(ctx: _Context, job: tuple[str, tuple[Setting, ...], float]) -> list[tuple]:
    """Every setting of one layer, the model measured at the anchors only (:mod:`onnx_dc.analysis.estimate`):
    per setting (score, stored bytes, passes run, smooth error, own error, estimated)."""
    name, grid, baseline = job
    own, nbytes, passes = [], [], []
    for setting in grid:
        state, ran = _compressed(ctx, name, setting)
        own.append(own_error(ctx, state, name))
        nbytes.append(stored_bytes(state.layers[name]))
        passes.append(ran)
        del state
    measured = {}
    one_codebook = [i for i, s in enumerate(grid) if s.codebook == Codebook.LAYER.value]  # the anchors' settings
    for i in anchor_indices(own, among=one_codebook):
        state, _ = _compressed(ctx, name, grid[i])  # compressed again: seeded, the same weights
        measured[i] = score_and_error(ctx.metric, state.dense_model())
    return [(score, nbytes[i], passes[i], error, own[i], estimated)
            for i, (score, error, estimated) in enumerate(estimate(own, measured, baseline))]


def _compressed(ctx: _Context, name: str, setting: Setting) -> tuple[CompressionState, tuple[str, ...]]:
    """A state of the model with only ``name`` compressed by ``setting``, and the passes that changed it."""
    entry = setting.apply(ctx.entries[name])
    state = CompressionState.start(onnx.load_model_from_string(ctx.model), Plan((entry,), ()))
    with progress.quieted():
        passes = _compress_layer(state, name, setting, ctx.calib)
    return state, passes


def own_error(ctx: _Context, state: CompressionState, name: str) -> float | None:
    """The compressed layer's own output error on the calibration samples, left after bias correction
    (:func:`onnx_dc.passes.bias_correct.residual_error`); None without its statistics."""
    st = ctx.calib.stats.get(name) if ctx.calib is not None else None
    if st is None:
        return None
    return residual_error(state.layers[name].weights, original_weights(state, name), st,
                          ctx.calib.settings.bias_correction)


def _compress_layer(state: CompressionState, name: str, setting: Setting, calib: CalibStats | None) -> tuple[str, ...]:
    if calib is not None and name in calib.stats:
        from onnx_dc.calibrate import run_with_stats

        return tuple(run_with_stats(state, {name: calib.stats[name]}, calib.settings).passes_ran())
    prune(state)
    share(state)
    return (("prune",) if setting.sparse_ratio else ()) + (("share",) if setting.class_num else ())


def stored_bytes(layer: LayerState) -> int:
    """Bytes the lowering pass stores for a layer (float32 when no compressed form is smaller)."""
    enc = encode_layer(layer)
    return 4 * layer.weights.size if enc.op == "raw" else sum(t.nbytes for t in enc.tensors.values())


def run_sensitivity(
    model: onnx.ModelProto | str | os.PathLike,
    metric: Metric,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    class_nums: Sequence[int] = DEFAULT_CLASS_NUMS,
    runner: Runner = Runner(),
    codebooks: Sequence[str] = DEFAULT_CODEBOOKS,
    config: Any = None,
    calib: Any = None,
    estimated: bool = False,
) -> Sensitivity:
    """Sweep every compressible layer alone over ``settings_grid(ratios, class_nums)``.

    Args:
        model: the original model (path or ModelProto; not modified).
        metric: the evaluation function, ``metric(model) -> score`` (higher is better), picklable
            when the sweep runs in other processes (e.g. :class:`Accuracy`).
        ratios: sparse ratios in [0, 1).
        class_nums: numbers of shared values, 2..256.
        codebooks: codebook settings tried with each shared setting (``layer``, ``channel``).
        runner: serial, worker processes or Ray (:class:`onnx_dc.analysis.sweep.Runner`).
        config: a config whose ``skip`` / other settings (centroid_init, seed, ...) apply; its
            sparse_ratio / class_num are replaced by the sweep's; its ``calib:`` section says which
            data-aware passes run.
        calib: calibration samples (``mnist:DIR``, ``images:DIR``, a CalibSpec, ...): when given,
            each point runs the data-aware passes on statistics from the calibration part,
            collected once here (:func:`collect_calib_stats`).
        estimated: measure the model at a few anchor settings per layer and estimate the other points
            from the layer's own output error (:mod:`onnx_dc.analysis.estimate`); needs ``calib`` and a
            metric that measures a smooth error (:class:`~onnx_dc.analysis.metrics.Agreement`).

    Returns:
        A :class:`Sensitivity` with one point per (layer, setting), in that order.
    """
    from onnx_dc.api import prepare

    ratios, class_nums, codebooks = parse_ratios(ratios), parse_class_nums(class_nums), parse_codebooks(codebooks)
    if estimated and (calib is None or not hasattr(metric, "score_and_error")):
        raise ConfigError("an estimated sweep needs calibration samples (--calib) and a metric with a smooth "
                          "output error; measure every point instead (--no-estimate)")
    base = prepare(model, config)
    original = base.dense_model()  # nothing is compressed yet: the normalized model with every weight in it
    stats = collect_calib_stats(base, calib, config) if calib is not None else None
    ctx = _Context(serialize(original), {e.site.name: e for e in base.plan.entries}, metric, stats)
    grid = settings_grid(ratios, class_nums, codebooks)
    start = time.perf_counter()
    with progress.quieted():
        baseline = metric(original)
    if estimated:
        per_layer = run_jobs(measure_layer, ctx, [(name, grid, baseline) for name in ctx.entries], runner,
                             desc="sensitivity (estimated)")
        results = [r for layer in per_layer for r in layer]
    else:
        results = [r + (None, False) for r in run_jobs(measure, ctx, [(n, s) for n in ctx.entries for s in grid],
                                                       runner, desc="sensitivity")]
    jobs = [(name, s) for name in ctx.entries for s in grid]
    points = tuple(Point(name, s.sparse_ratio, s.class_num, score, baseline - score, nbytes, passes, s.codebook,
                         error, own, est)
                   for (name, s), (score, nbytes, passes, error, own, est) in zip(jobs, results))
    layers = tuple(LayerInfo(e.site.name, e.site.node, e.site.op_type, tuple(e.site.shape), e.site.numel)
                   for e in base.plan.entries)
    name = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    describe = getattr(metric, "describe", lambda: getattr(metric, "name", "score"))
    return Sensitivity(name, describe(), getattr(metric, "unit", ""), baseline, layers, points, ratios, class_nums,
                       runner.describe(), time.perf_counter() - start, codebooks)


