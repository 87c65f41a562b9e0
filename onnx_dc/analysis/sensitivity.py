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
drop <= D (each layer on its own; the drops of several layers add up roughly).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from onnx_dc import progress
from onnx_dc.data.datasets import Preprocess
from onnx_dc.graph.io import serialize
from onnx_dc.passes.lower import encode_layer
from onnx_dc.passes.data_aware import DataAwareSettings
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.plan import Plan, PlanEntry
from onnx_dc.analysis.sweep import Runner, run_jobs
from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_RATIOS, parse_class_nums, parse_ratios

DEFAULT_MAX_DROP = 1.0

Metric = Callable[[onnx.ModelProto], float]
PASS_ORDER = ("prune", "prune_by_activation", "reconstruct", "share", "weighted_kmeans", "gptq", "refit",
              "bias_correction")


@dataclass(frozen=True)
class Accuracy:
    """Evaluation function: top-1 accuracy in percent on a labeled dataset (``runtime.evaluate``).

    One onnxruntime thread, so that every worker computes the same numbers.
    """

    data: str
    preprocess: Preprocess | None = None
    split: str = "test"
    limit: int | None = None
    name: str = "top-1 accuracy"
    unit: str = "%"

    def __call__(self, model: onnx.ModelProto) -> float:
        from onnx_dc.runtime.evaluate import evaluate

        return 100.0 * evaluate(model, self.data, self.preprocess, self.split, self.limit, threads=1).accuracy

    def describe(self) -> str:
        """What is measured, on what."""
        part = f"first {self.limit} of " if self.limit else ""
        return f"{self.name} ({self.unit}) on {part}{self.data} {self.split}"


@dataclass(frozen=True)
class Agreement:
    """Evaluation function without labels: agreement with the original model on held-out samples.

    score = 100 x mean over the original's float outputs of the top-1 agreement (outputs that
    hold class scores) or the cosine similarity (others), from ``runtime.fidelity``; the
    original model scores 100. One onnxruntime thread, as :class:`Accuracy`.
    """

    calib: Any  # a CalibSpec or spec text (images:DIR, npz:FILE, mnist:DIR, ...)
    reference: bytes  # the original model, serialized
    name: str = "fidelity (top-1 agreement, else cosine)"
    unit: str = "%"

    def __call__(self, model: onnx.ModelProto) -> float:
        from onnx_dc.runtime.fidelity import compare_outputs
        from onnx_dc.runtime.session import InferenceSession

        outputs = compare_outputs(InferenceSession(self.reference, 1), InferenceSession(model, 1), self._heldout())
        return 100.0 * sum(o.top1 if o.top1 is not None else o.cosine for o in outputs) / max(len(outputs), 1)

    def _heldout(self):
        key = (str(self.calib), hash(self.reference))
        if key not in _HELDOUT:  # read once per process, not once per evaluation
            from onnx_dc.data.calib import load_calib

            data = load_calib(self.calib, onnx.load_model_from_string(self.reference))
            _HELDOUT[key] = data.heldout if len(data.heldout) else data.calib
        return _HELDOUT[key]

    def describe(self) -> str:
        """What is measured, on what."""
        return f"{self.name} ({self.unit}) on held-out samples of {self.calib}"


_HELDOUT: dict = {}


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: prune to ``sparse_ratio``, then share ``class_num`` values (None: not shared)."""

    sparse_ratio: float = 0.0
    class_num: int | None = None

    def apply(self, entry: PlanEntry) -> PlanEntry:
        """The plan entry compressed by this setting instead of its own."""
        s = dataclasses.replace(entry.settings, sparse_ratio=self.sparse_ratio, prune_quality=None,
                                quantize_term=self.class_num is not None,
                                class_num=self.class_num or entry.settings.class_num, skip=False)
        return dataclasses.replace(entry, settings=s, origin="sensitivity")

    def label(self) -> str:
        """``r0.9`` / ``k32`` / ``r0.9+k32``."""
        parts = ([f"r{self.sparse_ratio:g}"] if self.sparse_ratio else []) + (
            [f"k{self.class_num}"] if self.class_num else [])
        return "+".join(parts)


def settings_grid(ratios: Sequence[float], class_nums: Sequence[int]) -> tuple[Setting, ...]:
    """Every ratio alone, every class_num alone, then every (ratio, class_num) pair."""
    return (tuple(Setting(r, None) for r in ratios if r > 0) + tuple(Setting(0.0, k) for k in class_nums)
            + tuple(Setting(r, k) for r in ratios if r > 0 for k in class_nums))


@dataclass(frozen=True)
class LayerInfo:
    """A compressible weight of the swept model."""

    weight: str
    node: str
    op_type: str
    shape: tuple[int, ...]
    weights: int

    @property
    def dense_bytes(self) -> int:
        """Bytes as float32."""
        return 4 * self.weights


@dataclass(frozen=True)
class Point:
    """One measured (layer, setting)."""

    layer: str
    sparse_ratio: float
    class_num: int | None
    score: float
    drop: float
    bytes: int
    passes: tuple[str, ...] = ()  # the passes that changed the layer, in order

    @property
    def setting(self) -> Setting:
        """The setting measured."""
        return Setting(self.sparse_ratio, self.class_num)


@dataclass(frozen=True)
class CalibStats:
    """The data-aware settings and every layer's input statistics (plain NumPy arrays), collected once."""

    settings: DataAwareSettings
    stats: dict[str, Any]  # weight name -> onnx_dc.passes.stats.WeightStats


@dataclass(frozen=True)
class _Context:
    """What every job needs: the normalized model, the plan entries by weight, the evaluation function,
    and the input statistics when the data-aware passes run (sent to each worker once, with the rest)."""

    model: bytes
    entries: dict[str, PlanEntry]
    metric: Metric
    calib: CalibStats | None = None


def measure(ctx: _Context, job: tuple[str, Setting]) -> tuple[float, int, tuple[str, ...]]:
    """Score, stored bytes and passes run of the model with one layer compressed by one setting (a sweep job)."""
    name, setting = job
    entry = setting.apply(ctx.entries[name])
    state = CompressionState.start(onnx.load_model_from_string(ctx.model), Plan((entry,), ()))
    with progress.quieted():
        passes = _compress_layer(state, name, setting, ctx.calib)
    return ctx.metric(state.dense_model()), stored_bytes(state.layers[name]), passes


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


@dataclass(frozen=True)
class Sensitivity:
    """A finished sweep: per-layer curves, what they were measured with, and how long it took."""

    model: str
    metric: str
    unit: str
    baseline: float
    layers: tuple[LayerInfo, ...]
    points: tuple[Point, ...]
    ratios: tuple[float, ...]
    class_nums: tuple[int, ...]
    runner: str = "serial"
    seconds: float = 0.0

    @property
    def passes(self) -> tuple[str, ...]:
        """Every pass some point ran, in the order they run."""
        seen = {p for point in self.points for p in point.passes}
        return tuple(p for p in PASS_ORDER if p in seen) + tuple(sorted(seen - set(PASS_ORDER)))

    def layer(self, weight: str) -> LayerInfo:
        """A layer by weight name."""
        return next(info for info in self.layers if info.weight == weight)

    def options(self, weight: str) -> list[Point]:
        """Every measured setting of one layer."""
        return [p for p in self.points if p.layer == weight]

    def point(self, weight: str, setting: Setting) -> Point | None:
        """The measurement of one (layer, setting), if it was measured."""
        return next((p for p in self.options(weight) if p.setting == setting), None)

    def prune_curve(self, weight: str) -> list[tuple[float, float]]:
        """(sparse_ratio, score) with no sharing, from ratio 0 (the baseline)."""
        return [(0.0, self.baseline)] + [(p.sparse_ratio, p.score) for p in self.options(weight)
                                          if p.class_num is None]

    def share_curve(self, weight: str) -> list[tuple[int, float]]:
        """(class_num, score) with no pruning."""
        return [(p.class_num, p.score) for p in self.options(weight) if p.sparse_ratio == 0 and p.class_num]

    def suggest(self, max_drop: float) -> dict[str, Point | None]:
        """Per layer the setting with the fewest bytes whose drop <= ``max_drop`` (None: none is)."""
        out: dict[str, Point | None] = {}
        for info in self.layers:
            fits = [p for p in self.options(info.weight) if p.drop <= max_drop]
            out[info.weight] = min(fits, key=lambda p: (p.bytes, p.drop)) if fits else None
        return out

    def suggested_config(self, max_drop: float) -> dict[str, Any]:
        """:meth:`suggest` as a config in the docs/CONFIG.md layout (a layer nothing fits is skipped)."""
        chosen = self.suggest(max_drop)
        return config_for({w: (p.setting if p else None) for w, p in chosen.items()}, self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {"model": self.model, "metric": self.metric, "unit": self.unit, "baseline": self.baseline,
                "ratios": list(self.ratios), "class_nums": list(self.class_nums), "runner": self.runner,
                "seconds": round(self.seconds, 3), "passes": list(self.passes),
                "layers": [dataclasses.asdict(info) | {"dense_bytes": info.dense_bytes} for info in self.layers],
                "points": [dataclasses.asdict(p) for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        """Inverse of :meth:`to_dict` (a ``--json`` file read back)."""
        layers = tuple(LayerInfo(x["weight"], x["node"], x["op_type"], tuple(x["shape"]), x["weights"])
                       for x in d["layers"])
        points = tuple(Point(**(p | {"passes": tuple(p.get("passes", ()))})) for p in d["points"])
        return cls(d["model"], d["metric"], d["unit"], d["baseline"], layers, points,
                   tuple(d["ratios"]), tuple(d["class_nums"]), d.get("runner", "serial"), d.get("seconds", 0.0))

    def to_table(self, max_drop: float | None = None) -> str:
        """Drop per layer and setting (pruned alone, shared alone), then the suggested settings."""
        head = ["layer", "op", "weights"] + [f"r{r:g}" for r in self.ratios if r > 0] + [f"k{k}" for k in self.class_nums]
        rows = [head]
        for info in self.layers:
            drops = [self.point(info.weight, Setting(r, None)) for r in self.ratios if r > 0]
            drops += [self.point(info.weight, Setting(0.0, k)) for k in self.class_nums]
            rows.append([info.node, info.op_type, str(info.weights)] + [f"{p.drop:+.2f}" if p else "-" for p in drops])
        lines = [f"{self.model}: {self.metric} baseline {self.baseline:.2f}{self.unit}; drop in points when only "
                 "that layer is pruned to rN (no sharing) or shared with kN values (no pruning), no retraining; "
                 f"passes: {', '.join(self.passes) or 'none'}"]
        lines += _aligned(rows, left=2)
        if max_drop is not None:
            lines.append(f"suggested (per layer the fewest bytes within a drop of {max_drop:g}):")
            lines += _aligned(self._suggestion_rows(max_drop), left=2)
        return "\n".join(lines)

    def _suggestion_rows(self, max_drop: float) -> list[list[str]]:
        rows = [["layer", "sparse_ratio", "class_num", "bytes", "ratio", "drop"]]
        for weight, p in self.suggest(max_drop).items():
            info = self.layer(weight)
            if p is None:
                rows.append([info.node, "-", "-", str(info.dense_bytes), "1.0x", "(none fits: skipped)"])
            else:
                rows.append([info.node, f"{p.sparse_ratio:g}", str(p.class_num or "-"), str(p.bytes),
                             f"{info.dense_bytes / p.bytes:.1f}x", f"{p.drop:+.2f}"])
        return rows


def _aligned(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]


def config_for(chosen: dict[str, Setting | None], layers: Sequence[LayerInfo]) -> dict[str, Any]:
    """Per-layer settings as a config in the docs/CONFIG.md layout (None: ``skip: true``)."""
    nodes = []
    for info in layers:
        s = chosen.get(info.weight)
        rule: dict[str, Any] = {"match": _literal_pattern(info.node)}
        if s is None:
            rule["skip"] = True
        else:
            rule["sparse_ratio"] = s.sparse_ratio
            if s.class_num is None:
                rule["quantize_term"] = False
            else:
                rule["class_num"] = s.class_num
        nodes.append(rule)
    return {"version": 1, "nodes": nodes}


def _literal_pattern(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name`` (``[`` ``*`` ``?`` escaped)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def run_sensitivity(
    model: onnx.ModelProto | str | os.PathLike,
    metric: Metric,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    class_nums: Sequence[int] = DEFAULT_CLASS_NUMS,
    runner: Runner = Runner(),
    config: Any = None,
    calib: Any = None,
) -> Sensitivity:
    """Sweep every compressible layer alone over ``settings_grid(ratios, class_nums)``.

    Args:
        model: the original model (path or ModelProto; not modified).
        metric: the evaluation function, ``metric(model) -> score`` (higher is better), picklable
            when the sweep runs in other processes (e.g. :class:`Accuracy`).
        ratios: sparse ratios in [0, 1).
        class_nums: numbers of shared values, 2..256.
        runner: serial, worker processes or Ray (:class:`onnx_dc.analysis.sweep.Runner`).
        config: a config whose ``skip`` / other settings (centroid_init, seed, ...) apply; its
            sparse_ratio / class_num are replaced by the sweep's; its ``calib:`` section says which
            data-aware passes run.
        calib: calibration samples (``mnist:DIR``, ``images:DIR``, a CalibSpec, ...): when given,
            each point runs the data-aware passes on statistics from the calibration part,
            collected once here (:func:`collect_calib_stats`).

    Returns:
        A :class:`Sensitivity` with one point per (layer, setting), in that order.
    """
    from onnx_dc.api import prepare

    ratios, class_nums = parse_ratios(ratios), parse_class_nums(class_nums)
    base = prepare(model, config)
    original = base.dense_model()  # nothing is compressed yet: the normalized model with every weight in it
    stats = collect_calib_stats(base, calib, config) if calib is not None else None
    ctx = _Context(serialize(original), {e.site.name: e for e in base.plan.entries}, metric, stats)
    grid = settings_grid(ratios, class_nums)
    jobs = [(name, s) for name in ctx.entries for s in grid]
    start = time.perf_counter()
    with progress.quieted():
        baseline = metric(original)
    results = run_jobs(measure, ctx, jobs, runner, desc="sensitivity")
    points = tuple(Point(name, s.sparse_ratio, s.class_num, score, baseline - score, nbytes, passes)
                   for (name, s), (score, nbytes, passes) in zip(jobs, results))
    layers = tuple(LayerInfo(e.site.name, e.site.node, e.site.op_type, tuple(e.site.shape), e.site.numel)
                   for e in base.plan.entries)
    name = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    describe = getattr(metric, "describe", lambda: getattr(metric, "name", "score"))
    return Sensitivity(name, describe(), getattr(metric, "unit", ""), baseline, layers, points, ratios, class_nums,
                       runner.describe(), time.perf_counter() - start)


def collect_calib_stats(state: CompressionState, calib: Any, config: Any = None) -> CalibStats:
    """Input statistics of every planned layer of ``state`` on the calibration part of ``calib``.

    The same statistics ``compress(calib=...)`` collects (config ``calib:`` settings);
    ``state`` keeps its original weights (``keep_originals``).
    """
    from onnx_dc.calibrate import start_calib
    from onnx_dc.config import as_config
    from onnx_dc.runtime.collect import collect_stats

    run = start_calib(state, calib, as_config(config).calib)
    with progress.quieted():
        collected = collect_stats(state, run.data.calib, batch_size=run.settings.batch_size,
                                  full_max_dim=run.settings.full_hessian_max_dim)
    return CalibStats(run.settings, collected.stats)


def load_sensitivity(path: str | os.PathLike) -> Sensitivity:
    """Read a sensitivity JSON file written by ``onnx-dc sensitivity --json``."""
    from onnx_dc.errors import ModelError

    try:
        return Sensitivity.from_dict(json.loads(open(path, encoding="utf-8").read()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a sensitivity JSON file written by onnx-dc sensitivity --json "
                         f"({type(exc).__name__})") from None
