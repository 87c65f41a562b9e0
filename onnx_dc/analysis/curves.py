"""The results of a sensitivity sweep: the settings tried, the measured points per layer, the table,
the suggested per-layer config for a drop budget, and the JSON file (``onnx-dc sensitivity --json``).

Plain data: a sweep (:mod:`onnx_dc.analysis.sensitivity`) makes them, the target search
(:mod:`onnx_dc.analysis.target`) and the plots read them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onnx_dc.config import Codebook, parse_codebook
from onnx_dc.plan import PlanEntry
from onnx_dc.sweep_grid import codebook_marker


PASS_ORDER = ("prune", "prune_by_activation", "reconstruct", "share", "weighted_kmeans", "gptq", "joint", "refit",
              "bias_correction", "token_counts")


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: prune to ``sparse_ratio``, then share ``class_num`` values (None: not shared)
    with one codebook per layer or per-channel scales (``codebook``)."""

    sparse_ratio: float = 0.0
    class_num: int | None = None
    codebook: str = "layer"

    def apply(self, entry: PlanEntry) -> PlanEntry:
        """The plan entry compressed by this setting instead of its own."""
        s = dataclasses.replace(entry.settings, sparse_ratio=self.sparse_ratio, prune_quality=None,
                                quantize_term=self.class_num is not None,
                                class_num=self.class_num or entry.settings.class_num, skip=False,
                                **codebook_settings(self.codebook, entry.settings.group_rows))
        return dataclasses.replace(entry, settings=s, origin="sensitivity")

    def label(self) -> str:
        """``r0.9`` / ``k32`` / ``r0.9+k32`` / ``r0.9+k32/ch`` (channel scales)."""
        parts = ([f"r{self.sparse_ratio:g}"] if self.sparse_ratio else []) + (
            [f"k{self.class_num}{self.marker()}"] if self.class_num else [])
        return "+".join(parts)

    def marker(self) -> str:
        """``/ch`` for channel scales, ``/gG`` for a codebook per G channels, else nothing."""
        return codebook_marker(self.codebook) if self.class_num else ""


def codebook_settings(text: str, group_rows: int) -> dict:
    """The Settings fields of a sweep's codebook setting (``layer``, ``channel``, ``group:G``)."""
    kind, rows = parse_codebook(text)
    return {"codebook": kind, "group_rows": rows or group_rows}


def settings_grid(ratios: Sequence[float], class_nums: Sequence[int],
                  codebooks: Sequence[str] = ("layer",)) -> tuple[Setting, ...]:
    """Every ratio alone, every class_num alone, then every (ratio, class_num) pair; the settings that share
    values once per codebook setting."""
    return (tuple(Setting(r, None) for r in ratios if r > 0)
            + tuple(Setting(0.0, k, c) for c in codebooks for k in class_nums)
            + tuple(Setting(r, k, c) for c in codebooks for r in ratios if r > 0 for k in class_nums))


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
    codebook: str = "layer"
    error: float | None = None  # the metric's smooth output error, when it measures one (metrics.score_and_error)
    own_error: float | None = None  # the layer's own output error (analysis.estimate), when the sweep measured it
    estimated: bool = False  # score, drop and error estimated from own_error (analysis.estimate), not measured

    @property
    def setting(self) -> Setting:
        """The setting measured."""
        return Setting(self.sparse_ratio, self.class_num, self.codebook)


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
    codebooks: tuple[str, ...] = ("layer",)

    @property
    def passes(self) -> tuple[str, ...]:
        """Every pass some point ran, in the order they run."""
        seen = {p for point in self.points for p in point.passes}
        return tuple(p for p in PASS_ORDER if p in seen) + tuple(sorted(seen - set(PASS_ORDER)))

    @property
    def smooth(self) -> bool:
        """Whether every point carries the metric's smooth output error (sweeps on --calib samples)."""
        return bool(self.points) and all(p.error is not None for p in self.points)

    def evaluations_line(self) -> str:
        """How many points were measured (and estimated), in how long, where."""
        estimated = sum(p.estimated for p in self.points)
        done = (f"{len(self.points) - estimated} evaluations and {estimated} points estimated from the layers' own "
                "errors" if estimated else f"{len(self.points)} evaluations")
        return f"{done} in {self.seconds:.1f} s ({self.runner})"

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
        return [(p.class_num, p.score) for p in self.options(weight)
                if p.sparse_ratio == 0 and p.class_num and p.codebook == Codebook.LAYER.value]

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
                "ratios": list(self.ratios), "class_nums": list(self.class_nums), "codebooks": list(self.codebooks),
                "runner": self.runner,
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
                   tuple(d["ratios"]), tuple(d["class_nums"]), d.get("runner", "serial"), d.get("seconds", 0.0),
                   tuple(d.get("codebooks", ("layer",))))

    def to_table(self, max_drop: float | None = None) -> str:
        """Drop per layer and setting (pruned alone, shared alone), then the suggested settings."""
        head = ["layer", "op", "weights"] + [f"r{r:g}" for r in self.ratios if r > 0] + [f"k{k}" for k in self.class_nums]
        rows = [head]
        for info in self.layers:
            drops = [self.point(info.weight, Setting(r, None)) for r in self.ratios if r > 0]
            drops += [self.point(info.weight, Setting(0.0, k)) for k in self.class_nums]
            rows.append([info.node, info.op_type, str(info.weights)] + [_drop_cell(p) for p in drops])
        lines = [f"{self.model}: {self.metric} baseline {self.baseline:.2f}{self.unit}; drop in points when only "
                 "that layer is pruned to rN (no sharing) or shared with kN values (no pruning), no retraining; "
                 f"passes: {', '.join(self.passes) or 'none'}"
                 + ("; ~: estimated from the layer's own output error" if any(p.estimated for p in self.points)
                    else "")]
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
                rows.append([info.node, f"{p.sparse_ratio:g}", f"{p.class_num}{p.setting.marker()}" if p.class_num
                             else "-", str(p.bytes),
                             f"{info.dense_bytes / p.bytes:.1f}x", f"{p.drop:+.2f}"])
        return rows


def _drop_cell(p: Point | None) -> str:
    """A table cell: the point's drop, ``~`` before an estimated one, ``-`` where the point was not swept."""
    return "-" if p is None else ("~" if p.estimated else "") + f"{p.drop:+.2f}"


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
                if s.codebook != Codebook.LAYER.value:
                    rule["codebook"] = s.codebook
        nodes.append(rule)
    return {"version": 1, "nodes": nodes}


def _literal_pattern(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name`` (``[`` ``*`` ``?`` escaped)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def load_sensitivity(path: str | os.PathLike) -> Sensitivity:
    """Read a sensitivity JSON file written by ``onnx-dc sensitivity --json``."""
    from onnx_dc.errors import ModelError

    try:
        return Sensitivity.from_dict(json.loads(open(path, encoding="utf-8").read()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a sensitivity JSON file written by onnx-dc sensitivity --json "
                         f"({type(exc).__name__})") from None
