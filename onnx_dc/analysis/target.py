"""Per-layer settings from a target drop: a multiple-choice knapsack over the sensitivity curves.

Each layer l takes one measured setting o, with stored bytes b_lo and drop
d_lo = max(0, drop measured with l alone). Assuming the drops of several layers add up,

    minimise  sum_l b_lo   subject to   sum_l d_lo <= B

solved exactly by dynamic programming over the budget B cut into STEPS units (each drop
rounded up to whole units, so the sum of the true drops stays within B). The whole model
is then compressed with the choice and measured; while its drop D_m exceeds the target D
the budget shrinks, B <- B * D / D_m * BACKOFF, for at most ROUNDS rounds (the last one
with B = 0: per layer the smallest model among its settings that lost nothing alone).

The same measurement scores the per-layer suggestion of ``sensitivity --max-drop`` on the whole
model (:func:`measure_suggestion`), whose total drop is not bounded by the per-layer budget.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from onnx_dc.errors import ConfigError
from onnx_dc.analysis.curves import Point, Sensitivity, Setting, config_for
from onnx_dc.analysis.metrics import score_and_error

STEPS = 400
ROUNDS = 6
BACKOFF = 0.8
METHOD = "multiple-choice knapsack (exact DP over the drop budget), then measured back-off"


@dataclass(frozen=True)
class Round:
    """One measured choice: the budget it was solved for, predicted and measured drops, bytes."""

    budget: float
    predicted: float
    measured: float
    layer_bytes: int
    config: dict[str, Any]


@dataclass(frozen=True)
class TargetResult:
    """The chosen settings (the last round that met the target) and every round tried."""

    target: float
    baseline: float
    rounds: tuple[Round, ...]

    @property
    def chosen(self) -> Round:
        """The round whose config is used."""
        return self.rounds[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {"method": METHOD, "target_drop": self.target, "baseline": self.baseline,
                "rounds": [vars(r) for r in self.rounds], "config": self.chosen.config}

    def summary(self) -> str:
        """One line per round, then the outcome."""
        lines = [f"--target-drop {self.target:g} by {METHOD}; baseline {self.baseline:.2f}"]
        for i, r in enumerate(self.rounds, 1):
            lines.append(f"  round {i}: budget {r.budget:.3f}, predicted drop {r.predicted:.3f}, measured "
                         f"{r.measured:.3f}, layers {r.layer_bytes} B")
        return "\n".join(lines)


def knapsack(sens: Sensitivity, budget: float, steps: int = STEPS) -> dict[str, Point]:
    """Per layer one measured setting minimising total bytes with summed drops <= ``budget``.

    Raises:
        ConfigError: when no combination fits (some layer loses more than the budget at every setting).
    """
    unit = budget / steps if budget > 0 else 1.0
    cap = steps if budget > 0 else 0
    # best[c] = (bytes, choice) with c units of drop used at most
    best: list[tuple[float, tuple[Point, ...]] | None] = [(0, ())] * (cap + 1)
    for info in sens.layers:
        options = [(p, _units(p.drop, unit, budget)) for p in sens.options(info.weight)]
        new: list[tuple[float, tuple[Point, ...]] | None] = [None] * (cap + 1)
        for c in range(cap + 1):
            for p, u in options:
                prev = best[c - u] if u <= c else None
                if prev is not None and (new[c] is None or prev[0] + p.bytes < new[c][0]):
                    new[c] = (prev[0] + p.bytes, prev[1] + (p,))
        best = new
    if best[cap] is None:
        least = sum(max(0.0, min(p.drop for p in sens.options(i.weight))) for i in sens.layers)
        raise ConfigError(f"no measured settings fit a drop of {budget:g}: the least-loss setting of every layer "
                          f"together is predicted to lose {least:.3f}; the best reachable target is about that")
    return {p.layer: p for p in best[cap][1]}


def _units(drop: float, unit: float, budget: float) -> int:
    if drop <= 0:
        return 0
    return math.ceil(drop / unit - 1e-9) if budget > 0 else 1 + 10**9


def choose_settings(
    sens: Sensitivity,
    target: float,
    measure: Callable[[dict[str, Any]], tuple[float, int, onnx.ModelProto]],
) -> TargetResult:
    """Knapsack, then measure the whole model and back off while it misses ``target``.

    Args:
        sens: the sensitivity curves of the model.
        target: the largest drop allowed (points of the evaluation function's score), >= 0.
        measure: ``measure(config) -> (score, layer_bytes, model)`` of the whole model compressed with ``config``.

    Raises:
        ConfigError: when no round meets the target; the message says the best drop reached.
    """
    rounds: list[Round] = []
    budget = target
    for i in range(ROUNDS):
        last = i == ROUNDS - 1 or budget <= 1e-9
        if last:
            budget = 0.0
        chosen = knapsack(sens, budget)
        config = config_for({w: p.setting for w, p in chosen.items()}, sens.layers)
        score, nbytes, _, _ = measure(config)
        measured = sens.baseline - score
        rounds.append(Round(budget, sum(max(0.0, p.drop) for p in chosen.values()), measured, nbytes, config))
        if measured <= target:
            return TargetResult(target, sens.baseline, tuple(rounds))
        if last:
            break
        budget = budget * target / measured * BACKOFF if measured > 0 else 0.0
    best = min(rounds, key=lambda r: r.measured)
    raise ConfigError(f"--target-drop {target:g}: not met; the best reachable from these sensitivity curves is a "
                      f"drop of {best.measured:.3f} ({best.layer_bytes} B of layers); allow at least that, or "
                      "sweep gentler settings (--ratios / --class-nums)")


def compress_for_target(model, output_path, metric, target: float, sens: Sensitivity, preprocess=None, calib=None):
    """Compress ``model`` with the settings :func:`choose_settings` picks; write ``output_path`` if given.

    With ``calib`` (calibration samples) every round and the result run the data-aware passes,
    as the sweep's points did: with sequential statistics (the default) each round is a whole
    calibrated compress, so a round measures exactly the model the result will be; with
    ``sequential: false`` the rounds share statistics collected once.

    Returns:
        (the :class:`~onnx_dc.api.CompressResult` of the chosen config, the :class:`TargetResult`).
    """
    last: dict[str, Any] = {}
    chosen = choose_settings(sens, target, config_measure(model, metric, preprocess, calib,
                                                          lambda config, result: last.update(config=config, result=result)))
    # the round that met the target is the last one measured: its model is written, not made again
    return write_measured(model, output_path, chosen.chosen.config, last, preprocess, calib), chosen


def write_measured(model, output_path, config: dict[str, Any], kept: dict[str, Any], preprocess=None, calib=None):
    """The result measured for ``config`` (``kept``: ``{"config", "result"}``), written to ``output_path`` if given;
    compressed again only when ``kept`` holds another config's."""
    from onnx_dc import api
    from onnx_dc.graph.io import refuse_overwrite, write_model

    result = kept.get("result")
    if result is None or kept.get("config") != config:
        return api.compress(model, output_path, config, preprocess=preprocess, calib=calib)
    if output_path is not None:
        refuse_overwrite(output_path, [model])
        file_bytes, external = write_model(result.model, output_path)
        result = dataclasses.replace(result, report=dataclasses.replace(result.report, file_bytes=file_bytes),
                                     external_data=external)
    return result


def config_measure(model, metric, preprocess=None, calib=None, on_result: Callable[[dict, Any], None] | None = None
                   ) -> Callable[[dict[str, Any]], tuple[float, int, onnx.ModelProto, float | None]]:
    """``measure(config) -> (score, layer bytes, model, error)``: the whole model compressed with a config (nothing
    written), scored by ``metric`` (error: its smooth output error, None when it has none).

    With ``calib`` every measurement runs the data-aware passes, as the sweep's points did: with sequential
    statistics (the default) each one is a whole calibrated compress, so it measures exactly the model a
    compress with that config makes; with ``sequential: false`` the measurements share statistics
    collected once, here. ``on_result(config, result)`` receives each measured
    :class:`~onnx_dc.api.CompressResult` (so the chosen one need not be compressed again).
    """
    from onnx_dc import api, progress

    stats = None
    if calib is not None:
        from onnx_dc.calibrate import collect_calib_stats

        stats = collect_calib_stats(api.prepare(model), calib)
        if stats.settings.sequential:
            stats = None  # statistics depend on the upstream layers' settings: each measurement collects its own

    def measure(config: dict[str, Any]) -> tuple[float, int, onnx.ModelProto, float | None]:
        with progress.quieted():
            if stats is None:
                result = api.compress(model, None, config, preprocess=preprocess, calib=calib)
            else:
                from onnx_dc.calibrate import run_with_stats

                state = api.prepare(model, config)
                run_with_stats(state, stats.stats, stats.settings)
                result = api.finish(state, None, preprocess)
            if on_result is not None:
                on_result(config, result)
            score, error = score_and_error(metric, result.model)
            return score, result.report.totals()["compressed_bytes"], result.model, error

    return measure


@dataclass(frozen=True)
class MeasuredSuggestion:
    """The settings ``sensitivity`` suggests for a per-layer drop budget, applied to every layer at once and scored.

    Each layer's drop was measured with that layer alone compressed; together the drops add up, so the
    whole model's drop can be far above the budget (:func:`choose_settings` searches for a total).

    Attributes:
        max_drop: the per-layer budget the settings were suggested for.
        baseline: the score of the original model.
        score: the score of the model with every suggested setting.
        layer_drops: the suggested settings' own drops, summed (losses only).
        layer_bytes: stored bytes of the compressed layers.
    """

    max_drop: float
    baseline: float
    score: float
    layer_drops: float
    layer_bytes: int

    @property
    def drop(self) -> float:
        """The whole model's measured drop."""
        return self.baseline - self.score

    @property
    def exceeds(self) -> bool:
        """Whether the whole model loses more than the per-layer budget."""
        return self.drop > self.max_drop

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {"baseline": self.baseline, "score": self.score, "drop": self.drop, "sum_of_layer_drops": self.layer_drops,
                "layer_bytes": self.layer_bytes, "exceeds_max_drop": self.exceeds}


def measure_suggestion(model, sens: Sensitivity, max_drop: float, metric, preprocess=None,
                       calib=None) -> MeasuredSuggestion | None:
    """Compress ``model`` with ``sens.suggested_config(max_drop)`` (nothing written) and score it with ``metric``,
    as the rounds of :func:`choose_settings` are measured (:func:`config_measure`).

    Returns:
        The measurement; None when no layer has a suggested setting (nothing would be compressed).
    """
    suggested = [p for p in sens.suggest(max_drop).values() if p is not None]
    if not suggested:
        return None
    score, nbytes, _, _ = config_measure(model, metric, preprocess, calib)(sens.suggested_config(max_drop))
    return MeasuredSuggestion(max_drop, sens.baseline, score, sum(max(0.0, p.drop) for p in suggested), nbytes)


# --- settings from a size target ----------------------------------------------------------------
#
# The dual problem: each layer l takes one measured setting o (or stays dense: drop 0, float32 bytes),
#
#     minimise  sum_l e_lo   subject to   sum_l b_lo <= C
#
# where e_lo is the metric's smooth output error with l alone compressed (sum of ||y_q - y||^2 / ||y||^2
# over the outputs; sweeps on --calib samples measure it, metrics.Agreement), or the drop d_lo where the
# sweep has no such error (labeled accuracy, or a sweep saved before it was measured). The drop in top-1
# agreement on a few dozen held-out samples is too coarse to rank layers: most layers alone lose no
# sample, so the knapsack saw them as free. ResNet-20 (64 samples, 32 held out, --target-ratio 8): by
# drops .9846 worst cosine at 8.14x, by errors .9948 at 8.14x.
#
# solved exactly by dynamic programming over the byte capacity C cut into units (at least STEPS and
# UNITS_PER_LAYER per layer; each layer's bytes rounded up to whole units, so the true sum stays within
# C, and the rounding costs at most 1 / UNITS_PER_LAYER of C per layer; where that rounding alone
# refuses C, it is solved again in units of one byte). The whole model is compressed with
# the choice, packed (.dcz) and measured; C starts at the original file's bytes / R and is scaled by
# (bytes wanted / .dcz bytes measured) until the .dcz ratio lands in [R, R * RATIO_SLACK], for at most
# ROUNDS rounds; after a round that missed R the capacity goes RATIO_MARGIN lower still, so that the
# discrete choices do not circle just above the size wanted. The errors of layers do not always add up:
# compressed together, early layers' errors grow through later ones, and FastestDet's knapsack choice
# at >= 8x (.9126 worst cosine at 8.00x) lost to the sweep's own uniform 0 / 16 (.9199 at 8.25x). So the
# best uniform settings predicted to fit are measured as rounds too (at most UNIFORM_TRIES). The chosen
# round is the one with the smallest measured drop among those >= R, then the smallest measured error.

RATIO_SLACK = 1.03
UNITS_PER_LAYER = 100
EXACT_UNITS = 1 << 20  # when rounding alone refuses a capacity, it is solved again in bytes (up to this many)
RATIO_MARGIN = 0.98
RATIO_METHOD = "multiple-choice knapsack (exact DP over the layers' bytes), then measured .dcz ratio"
UNIFORM_TRIES = 2  # uniform settings measured after the knapsack's rounds, at most
UNIFORM_SLACK = 1.1  # ... among those predicted at most this much above the bytes wanted (the prediction is rough)


@dataclass(frozen=True)
class RatioRound(Round):
    """A :class:`Round` of a size target (``budget``: the layers' bytes it was solved for) and the .dcz it packs to."""

    packed_bytes: int
    ratio: float
    error: float | None = None  # the metric's smooth output error of the whole model, when it measures one
    kind: str = "knapsack"  # or "uniform R/K": one swept setting on every layer (:func:`uniform_candidates`)

    def rank(self) -> tuple[float, float, float]:
        """Smaller is better (:func:`ratio_rank`)."""
        return ratio_rank(self.measured, self.error, self.ratio)


def ratio_rank(drop: float, error: float | None, ratio: float) -> tuple[float, float, float]:
    """How a size target's rounds compare, smaller is better: the measured drop, then the smooth error, then
    the larger ratio."""
    return drop, error if error is not None else 0.0, -ratio


@dataclass(frozen=True)
class RatioResult:
    """The rounds tried for ``--target-ratio``; :attr:`chosen` is the best round that met it (:meth:`RatioRound.rank`)."""

    target: float
    baseline: float
    original_bytes: int
    rounds: tuple[RatioRound, ...]

    @property
    def chosen(self) -> RatioRound:
        """The round with the smallest measured drop among those at least ``target`` times smaller."""
        return min((r for r in self.rounds if r.ratio >= self.target), key=RatioRound.rank)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {"method": RATIO_METHOD, "target_ratio": self.target, "baseline": self.baseline,
                "original_bytes": self.original_bytes, "rounds": [vars(r) for r in self.rounds],
                "chosen_round": self.rounds.index(self.chosen) + 1, "config": self.chosen.config}

    def summary(self) -> str:
        """One line per round, then nothing: the caller prints the chosen one."""
        lines = [f"--target-ratio {self.target:g} by {RATIO_METHOD}; baseline {self.baseline:.2f}, "
                 f"original {self.original_bytes} B"]
        for i, r in enumerate(self.rounds, 1):
            error = "" if r.error is None else f", output error {r.error:.4g}"
            kind = "" if r.kind == "knapsack" else f" ({r.kind})"
            lines.append(f"  round {i}{kind}: layers within {r.budget} B, predicted drop {r.predicted:.3f}, measured "
                         f"{r.measured:.3f}{error}, layers {r.layer_bytes} B, .dcz {r.packed_bytes} B ({r.ratio:.2f}x)")
        return "\n".join(lines)


def knapsack_bytes(sens: Sensitivity, capacity: int, steps: int = STEPS) -> dict[str, Point | None]:
    """Per layer one measured setting (None: dense) minimising the summed errors (drops where the sweep has no
    errors) with total bytes <= ``capacity``.

    Raises:
        ConfigError: when even the smallest measured setting of every layer takes more than ``capacity``.
    """
    smooth = sens.smooth
    layers = [[(None, 0.0, info.dense_bytes)] + [(p, _cost(p, smooth), p.bytes) for p in sens.options(info.weight)]
              for info in sens.layers]
    steps = max(steps, UNITS_PER_LAYER * len(layers))
    chosen = _knapsack_units(layers, capacity, steps)
    least = least_bytes(sens)
    if chosen is None and least <= capacity and steps < min(capacity, EXACT_UNITS):
        chosen = _knapsack_units(layers, capacity, min(capacity, EXACT_UNITS))  # the rounding was in the way
    if chosen is None:
        near = "" if least > capacity else f" (within the search's rounding to {capacity / steps:.0f} B units)"
        raise ConfigError(f"the smallest measured settings of every layer take {least} B together{near}, more than "
                          f"the {capacity} B the size target leaves them; sweep harsher settings (--ratios / --class-nums)")
    return {info.weight: p for info, p in zip(sens.layers, chosen)}


def _cost(point: Point, smooth: bool) -> float:
    """What the size target minimises for one point: its smooth output error where the sweep measured
    errors on every point, else its drop (never below 0)."""
    return max(0.0, point.error if smooth else point.drop)


def least_bytes(sens: Sensitivity) -> int:
    """The layers' bytes with every layer at its smallest measured setting (or dense, if smaller)."""
    return sum(min([info.dense_bytes] + [p.bytes for p in sens.options(info.weight)]) for info in sens.layers)


def _knapsack_units(layers: list[list[tuple[Point | None, float, int]]], capacity: int,
                    steps: int) -> list[Point | None] | None:
    """The DP of :func:`knapsack_bytes` with ``capacity`` cut into ``steps`` units: per layer (its options:
    point or None, cost, bytes) the chosen point; None when no choice fits."""
    unit = max(capacity, 1) / steps
    cost = np.zeros(steps + 1)  # cost[c]: the least summed cost of the layers so far within c units
    picks: list[tuple[list[int], np.ndarray]] = []
    for options in layers:
        units = [math.ceil(b / unit - 1e-9) for _, _, b in options]
        new, pick = np.full(steps + 1, np.inf), np.full(steps + 1, -1)
        for j, ((_, d, _), u) in enumerate(zip(options, units)):
            if u > steps:
                continue
            cand = np.full(steps + 1, np.inf)
            cand[u:] = cost[: steps + 1 - u] + d
            better = cand < new  # the first option of equal cost stays
            new[better], pick[better] = cand[better], j
        picks.append((units, pick))
        cost = new
    if not np.isfinite(cost[steps]):
        return None
    chosen: list[Point | None] = []
    c = steps
    for options, (units, pick) in zip(reversed(layers), reversed(picks)):
        j = int(pick[c])
        chosen.append(options[j][0])
        c -= units[j]
    return chosen[::-1]


def choose_for_ratio(
    sens: Sensitivity,
    target: float,
    original_bytes: int,
    measure: Callable[[dict[str, Any]], tuple[float, int, onnx.ModelProto, float | None]],
    packed_size: Callable[[onnx.ModelProto], int],
) -> RatioResult:
    """Knapsack over the layers' bytes, then compress, pack and measure; rescale the capacity until the .dcz
    is ``target`` times smaller than ``original_bytes`` (see the comment above :data:`RATIO_SLACK`). Then
    the best uniform settings predicted to fit are measured too (:func:`_uniform_rounds`), so that the
    choice is never worse, as measured, than the sweep's best uniform setting at that size.

    Raises:
        ConfigError: when no round reaches the ratio; the message says the largest ratio reached.
    """
    wanted = original_bytes / target
    least = least_bytes(sens)  # the .dcz codes the layers further, so even these may pack small enough
    capacity = max(int(wanted), least)
    rounds: list[RatioRound] = []
    tried: set[str] = set()
    for _ in range(ROUNDS):
        chosen = knapsack_bytes(sens, capacity)
        config = config_for({w: None if p is None else p.setting for w, p in chosen.items()}, sens.layers)
        key = repr(config)
        if key in tried:  # the capacity moved too little to change any layer's choice
            break
        tried.add(key)
        rounds.append(_measured_round(sens, original_bytes, measure, packed_size, config, capacity, chosen.values()))
        packed = rounds[-1].packed_bytes
        if target <= original_bytes / packed <= target * RATIO_SLACK:
            break
        capacity = max(least, int(capacity * wanted / packed * (RATIO_MARGIN if packed > wanted else 1.0)))
    rounds += _uniform_rounds(sens, target, original_bytes, rounds, tried, measure, packed_size)
    if not any(r.ratio >= target for r in rounds):
        best = max(r.ratio for r in rounds)
        raise ConfigError(f"--target-ratio {target:g}: not met; the smallest .dcz these sensitivity curves reach is "
                          f"{best:.2f}x smaller; ask for at most that, or sweep harsher settings (--ratios / --class-nums)")
    return RatioResult(target, sens.baseline, original_bytes, tuple(rounds))


def uniform_candidates(sens: Sensitivity) -> list[tuple[float, int, Setting]]:
    """(summed error, summed bytes, setting) of every swept setting that every layer has, applied to every
    layer, best first: least summed error (drops where the sweep has no errors), then fewer bytes."""
    smooth = sens.smooth
    common = set.intersection(*({p.setting for p in sens.options(info.weight)} for info in sens.layers)) \
        if sens.layers else set()
    out = []
    for setting in common:
        points = [sens.point(info.weight, setting) for info in sens.layers]
        out.append((sum(_cost(p, smooth) for p in points), sum(p.bytes for p in points), setting))
    return sorted(out, key=lambda c: (c[0], c[1], repr(c[2])))


def _uniform_rounds(sens: Sensitivity, target: float, original_bytes: int, rounds: list[RatioRound],
                    tried: set[str], measure, packed_size) -> list[RatioRound]:
    """The knapsack adds the layers' errors as if they did not interact; where they do, one swept setting on
    every layer can be closer to the original at the same size. Measure the best uniform settings predicted
    to come near ``target`` (the .dcz bytes scaled from the knapsack round nearest it, within UNIFORM_SLACK:
    settings differ in how far the .dcz's coding shrinks them), at most UNIFORM_TRIES, stopping at the
    first that reaches it; the rounds then rank together (:func:`ratio_rank`)."""
    if not rounds:
        return []
    near = min(rounds, key=lambda r: abs(r.ratio - target))
    scale = near.packed_bytes / max(near.layer_bytes, 1)  # .dcz bytes per byte of the layers, as measured
    wanted = original_bytes / target
    out: list[RatioRound] = []
    for _, nbytes_sum, setting in uniform_candidates(sens):
        if len(out) >= UNIFORM_TRIES or any(r.ratio >= target for r in out):
            break
        if nbytes_sum * scale > wanted * UNIFORM_SLACK:
            continue
        config = config_for({info.weight: setting for info in sens.layers}, sens.layers)
        if repr(config) in tried:
            continue
        tried.add(repr(config))
        kind = f"uniform {setting.sparse_ratio:g}/{setting.class_num or 'f32'}" + (
            "" if setting.codebook == "layer" else f" {setting.codebook}")
        points = [sens.point(info.weight, setting) for info in sens.layers]
        out.append(_measured_round(sens, original_bytes, measure, packed_size, config, nbytes_sum, points, kind))
    return out


def _measured_round(sens: Sensitivity, original_bytes: int, measure, packed_size, config: dict[str, Any],
                    budget: int, points, kind: str = "knapsack") -> RatioRound:
    """Compress, pack and measure ``config``: one round; its predicted drop is the ``points``' summed drops."""
    score, nbytes, model, error = measure(config)
    packed = packed_size(model)
    return RatioRound(budget, sum(max(0.0, p.drop) for p in points if p is not None), sens.baseline - score,
                      nbytes, config, packed, original_bytes / packed, error, kind)


def compress_for_ratio(model, output_path, metric, target: float, sens: Sensitivity, preprocess=None, calib=None):
    """Compress ``model`` (a file) with the settings :func:`choose_for_ratio` picks; write ``output_path`` if given.

    Returns:
        (the :class:`~onnx_dc.api.CompressResult` of the chosen config, the :class:`RatioResult`).
    """
    import os

    from onnx_dc.formats import dcz
    from onnx_dc.formats.models import model_bytes

    original = os.path.getsize(model)
    last: dict[str, Any] = {}
    best: dict[str, Any] = {}

    def packed_size(compressed: onnx.ModelProto) -> int:
        packed = len(dcz.pack_bytes(model_bytes(compressed)))
        # the chosen round (RatioRound.rank: the smallest drop, then error, then the largest ratio, among
        # those >= target); only its result is kept (a result holds the model's weights)
        rank = ratio_rank(-last["score"], last["error"], original / packed)  # -score: the drop less the baseline
        if original / packed >= target and ("rank" not in best or rank < best["rank"]):
            best.update(rank=rank, config=last["config"], result=last["result"])
        return packed

    base = config_measure(model, metric, preprocess, calib, lambda config, result: last.update(config=config,
                                                                                               result=result))

    def measure(config: dict[str, Any]) -> tuple[float, int, onnx.ModelProto, float | None]:
        score, nbytes, compressed, error = base(config)
        last.update(score=score, error=error)
        return score, nbytes, compressed, error

    chosen = choose_for_ratio(sens, target, original, measure, packed_size)
    last.clear()
    return write_measured(model, output_path, chosen.chosen.config, best, preprocess, calib), chosen
