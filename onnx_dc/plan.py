"""Resolve a config against a model into an explicit plan: weight name -> settings.

Validation happens here, once, before any tensor is touched: every pattern that matches
no compressible node, every shared weight asked to be compressed two ways, and a model
with nothing to compress are reported together. The one check that reads the weights
(:func:`check_prune_quality`) runs on them before any pass changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from onnx_dc.config import Config, Settings
from onnx_dc.errors import ConfigError, ModelError
from onnx_dc.graph import ops
from onnx_dc.graph.weights import Inventory, Skipped, WeightSite
from onnx_dc.numerics.prune import quality_threshold


@dataclass(frozen=True)
class PlanEntry:
    """One weight to compress, its settings, and the config rule that set them."""

    site: WeightSite
    settings: Settings
    origin: str


@dataclass(frozen=True)
class Plan:
    """The resolved per-weight settings, in graph order, and what is left alone with why."""

    entries: tuple[PlanEntry, ...]
    skipped: tuple[Skipped, ...]
    notes: tuple[str, ...] = ()  # whole-model remarks (an already-quantized model)

    def entry(self, weight: str) -> PlanEntry:
        """The entry of a weight by initializer name."""
        for e in self.entries:
            if e.site.name == weight:
                return e
        raise KeyError(weight)


def make_plan(inventory: Inventory, config: Config, model_name: str = "model") -> Plan:
    """Resolve ``config`` for every weight site of ``inventory``.

    Raises:
        ConfigError: listing every problem.
        ModelError: when the model has no compressible weight at all.
    """
    problems: list[str] = []
    entries: list[PlanEntry] = []
    skipped = list(inventory.skipped)
    for site in inventory.sites:
        resolved = {c.node: config.settings_for(c.node, c.op_type, site.name) for c in site.consumers}
        settings, origin = resolved[site.node]
        differing = [n for n, (s, _) in resolved.items() if s != settings]
        if differing:
            problems.append(
                f"weight {site.name!r} is shared by nodes {site.node!r} and {differing[0]!r}, which the config "
                "gives different settings; give them the same settings (they share one compressed tensor)"
            )
            continue
        if settings.skip:
            skipped.append(Skipped(site.node, site.op_type, site.name, f"skip: true in the config ({origin})"))
            continue
        if not settings.quantize_term and not settings.prunes:
            skipped.append(Skipped(site.node, site.op_type, site.name,
                                   "quantize_term is false and nothing is pruned: left as float32"))
            continue
        entries.append(PlanEntry(site, settings, origin))
    names = [(c.node, s.name) for s in inventory.sites for c in s.consumers]
    for rule in config.nodes:
        if not any(rule.matches(node, weight) for node, weight in names):
            other = [s.node for s in inventory.skipped if rule.matches(s.node, s.tensor)]
            hint = f" (it matches {other[0]!r}, which is not compressed: see the report)" if other else ""
            known = ", ".join(sorted({n for n, _ in names})[:8])
            problems.append(f"nodes pattern {rule.match!r} matches no compressible node{hint}; compressible nodes: {known}")
    if problems:
        raise ConfigError(f"{config.source}: " + "; ".join(problems))
    if not inventory.sites and inventory.notes:
        raise ModelError(f"{model_name}: {inventory.notes[0].split(';')[0]}, and it has no float weight to compress")
    if not inventory.sites:
        reasons = "; ".join(f"{s.node} ({s.op_type}): {s.reason}" for s in inventory.skipped[:3])
        raise ModelError(
            f"{model_name}: no compressible weights ({', '.join(ops.compressible()[:-1])} or "
            f"{ops.compressible()[-1]} with a float32 initializer weight){': ' + reasons if reasons else ''}"
        )
    return Plan(tuple(entries), tuple(skipped), inventory.notes)


def check_prune_quality(plan: Plan, weights: Mapping[str, np.ndarray]) -> None:
    """Refuse a ``prune_quality`` that prunes every weight of a layer.

    A layer keeps ``|w| > quality x std(W)``, so it keeps any weight only for
    ``quality < max|W| / std(W)``: unlike ``sparse_ratio``, whose range [0, 1) says so by
    itself, the bound depends on the layer's weights (``weights``: name -> original values).

    Raises:
        ConfigError: naming every such layer and its bound.
    """
    emptied = []
    for e in plan.entries:
        quality, w = e.settings.prune_quality, weights[e.site.name]
        if quality is None or not w.size:
            continue
        largest, threshold = max(float(w.max()), -float(w.min())), quality_threshold(w, quality)
        if 0 < largest <= threshold:
            emptied.append(f"{e.site.label} ({quality:g}, bound {largest * quality / threshold:.3g})")
    if emptied:
        raise ConfigError(f"prune_quality prunes every weight of {', '.join(emptied)}: a layer keeps weights only "
                          "for prune_quality below its bound max|W| / std(W); give a smaller value (--prune-quality "
                          "or the config)")
