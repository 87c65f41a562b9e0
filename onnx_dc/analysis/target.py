"""Per-layer settings from a target drop: a multiple-choice knapsack over the sensitivity curves.

Each layer l takes one measured setting o, with stored bytes b_lo and drop
d_lo = max(0, drop measured with l alone). Assuming the drops of several layers add up,

    minimise  sum_l b_lo   subject to   sum_l d_lo <= B

solved exactly by dynamic programming over the budget B cut into STEPS units (each drop
rounded up to whole units, so the sum of the true drops stays within B). The whole model
is then compressed with the choice and measured; while its drop D_m exceeds the target D
the budget shrinks, B <- B * D / D_m * BACKOFF, for at most ROUNDS rounds (the last one
with B = 0: per layer the smallest model among its settings that lost nothing alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import onnx

from onnx_dc.errors import ConfigError
from onnx_dc.analysis.curves import Point, Sensitivity, config_for

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
        score, nbytes, _ = measure(config)
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
    from onnx_dc import api, progress

    stats = None
    if calib is not None:
        from onnx_dc.calibrate import collect_calib_stats

        stats = collect_calib_stats(api.prepare(model), calib)
        if stats.settings.sequential:
            stats = None  # statistics depend on the round's upstream layers: each round collects its own

    def measure(config: dict[str, Any]) -> tuple[float, int, onnx.ModelProto]:
        with progress.quieted():
            if stats is None:
                result = api.compress(model, None, config, preprocess=preprocess, calib=calib)
            else:
                from onnx_dc.calibrate import run_with_stats

                state = api.prepare(model, config)
                run_with_stats(state, stats.stats, stats.settings)
                result = api.finish(state, None, preprocess)
            return metric(result.model), result.report.totals()["compressed_bytes"], result.model

    chosen = choose_settings(sens, target, measure)
    result = api.compress(model, output_path, chosen.chosen.config, preprocess=preprocess, calib=calib)
    return result, chosen
