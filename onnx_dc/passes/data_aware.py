"""Data-aware compression without backprop: settings and the order the passes run in.

    prune (by |w| x ||x|| within rows)  ->  reconstruct the kept weights (least squares on E[x x^T])
      ->  share (k-means weighted by E[x_j^2])  ->  [GPTQ-style codes, off by default]
      ->  refit codebooks (K x K least squares on E[x x^T])  ->  correct biases (by (W - W_q) E[x])

An embedding table (Gather) goes its own way, by how often each row is read (:mod:`onnx_dc.passes.lookup`).

Each step can be switched off in the config's ``calib:`` section (docs/CONFIG.md); the
statistics come from :mod:`onnx_dc.runtime.collect`. Layers without statistics go the
data-free way (magnitude pruning, plain k-means) and are listed in the result.

The passes act on one layer at a time (:func:`compress_layer`), so the statistics may come
from the original model for every layer at once (``sequential: false``) or wave by wave
from the model whose upstream layers are already compressed (``sequential: true``, the
default; :func:`onnx_dc.calibrate.run_calibrated` drives the waves): each layer then aims at
the original layer's output from the inputs it will really get, which corrects the error
that reaches it from upstream instead of letting it compound through a deep network.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from onnx import numpy_helper

from onnx_dc import progress
from onnx_dc.errors import ConfigError
from onnx_dc.passes.bias_correct import correct_bias
from onnx_dc.passes.gptq import gptq_layer
from onnx_dc.passes.joint import obs_mask
from onnx_dc.passes.lookup import compress_lookup
from onnx_dc.passes.prune import prune_layer
from onnx_dc.passes.prune_activation import prune_layer_by_activation
from onnx_dc.passes.reconstruct import reconstruct_layer
from onnx_dc.passes.refit import output_error, refit_layer
from onnx_dc.passes.share import share_layer
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.passes.stats import WeightStats
from onnx_dc.sections import Field, Section


class PruneBy(str, enum.Enum):
    """What pruning ranks weights by."""

    MAGNITUDE = "magnitude"  # |w| over the whole layer (the paper)
    ACTIVATION = "activation"  # |w| x ||x_j|| within each output row (needs samples)


PRUNE_SCOPES = ("row", "layer")


@dataclass(frozen=True)
class DataAwareSettings:
    """The ``calib:`` section of a config."""

    prune_by: PruneBy = PruneBy.ACTIVATION
    prune_scope: str = "row"  # activation scores compared within each output row, or over the layer
    reconstruct: bool = True
    weighted_kmeans: bool = True
    refit: bool = True
    bias_correction: bool = True
    gptq: bool | str = "unpruned"  # "unpruned": layers that prune nothing (see _compress_matrix); True: every layer
    joint: bool = False  # mask and codes chosen together with error compensation (passes/joint.py)
    sequential: bool = True
    batch_size: int = 64
    full_hessian_max_dim: int = 4096
    carry_mb: int = 2048  # sequential: activations carried between waves, both models (0: none)
    blocks: bool = False  # block reconstruction after the layer passes (onnx_dc/train/blocks.py)
    block_layers: int = 1  # blocks: planned layers per block, at most

    def to_dict(self) -> dict[str, Any]:
        """Plain values."""
        return {**dataclasses.asdict(self), "prune_by": self.prune_by.value}


GPTQ_MODES = (False, True, "unpruned")


def _gptq_mode(value: Any) -> bool | str:
    """``gptq:`` true, false or unpruned."""
    if value in GPTQ_MODES and (isinstance(value, bool) or value == "unpruned"):
        return value
    raise ValueError("must be true, false or unpruned")


DATA_AWARE_SECTION = Section(
    Field("prune_by", PruneBy),
    Field("prune_scope", PRUNE_SCOPES),
    Field("reconstruct", bool),
    Field("weighted_kmeans", bool),
    Field("refit", bool),
    Field("bias_correction", bool),
    Field("gptq", _gptq_mode),
    Field("joint", bool),
    Field("sequential", bool),
    Field("batch_size", int, low=1),
    Field("full_hessian_max_dim", int, low=1),
    Field("carry_mb", int, low=0, note="megabytes, 0 turns carrying off"),
    Field("blocks", bool),
    Field("block_layers", int, low=1),
)


def parse_data_aware(raw: Mapping[str, Any] | None, source: str = "calib") -> DataAwareSettings:
    """Validate the ``calib:`` mapping (every problem reported at once).

    Raises:
        ConfigError: listing every problem, each prefixed by ``source``.
    """
    return DataAwareSettings(**DATA_AWARE_SECTION.parse(raw, source, ConfigError))


@dataclass
class DataAwareResult:
    """What the data-aware passes did: layer names per pass, and biases before correction."""

    pruned_by_activation: list[str] = field(default_factory=list)
    reconstructed: list[str] = field(default_factory=list)
    weighted_kmeans: list[str] = field(default_factory=list)
    gptq: list[str] = field(default_factory=list)
    joint: list[str] = field(default_factory=list)
    joint_lost: list[str] = field(default_factory=list)  # joint: layers where today's passes gave the smaller error
    gptq_lost: list[str] = field(default_factory=list)  # gptq: unpruned: layers that kept the nearest codes
    refit: list[str] = field(default_factory=list)
    bias_corrected: list[str] = field(default_factory=list)
    token_counts: list[str] = field(default_factory=list)  # embedding tables weighted by their rows' counts
    without_stats: dict[str, str] = field(default_factory=dict)
    original_biases: dict[str, tuple[str, np.ndarray, np.ndarray]] = field(default_factory=dict)  # (bias, rows, values)
    waves: int | None = None  # sequential statistics: how many waves; None when measured on the original alone

    def passes_ran(self) -> list[str]:
        """Names of the passes that changed at least one layer."""
        named = {"prune_by_activation": self.pruned_by_activation, "reconstruct": self.reconstructed,
                 "weighted_kmeans": self.weighted_kmeans, "gptq": self.gptq, "joint": self.joint,
                 "refit": self.refit, "bias_correction": self.bias_corrected, "token_counts": self.token_counts}
        return [k for k, v in named.items() if v]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (layer names per pass)."""
        return {"passes": self.passes_ran(), "prune_by_activation": self.pruned_by_activation,
                "reconstruct": self.reconstructed,
                "weighted_kmeans": self.weighted_kmeans, "gptq": self.gptq, "joint": self.joint,
                "joint_lost": self.joint_lost, "gptq_lost": self.gptq_lost, "refit": self.refit,
                "bias_correction": self.bias_corrected, "token_counts": self.token_counts,
                "without_statistics": self.without_stats,
                "sequential_waves": self.waves}


def original_weights(state: CompressionState, name: str) -> np.ndarray:
    """The uncompressed values of a planned weight (``state.model`` keeps them: see ``keep_originals``)."""
    init = next(t for t in state.model.graph.initializer if t.name == name)
    return numpy_helper.to_array(init).astype(np.float32, copy=False)


def kmeans_importance(st: WeightStats, shape: tuple[int, ...]) -> np.ndarray:
    """Weighted k-means' weight per element: ``E[x_j^2]`` of its input, plus a tiny floor so dead inputs still count."""
    importance = st.element_moment(shape)
    importance += 1e-6 * max(float(importance.mean()), 1e-30)
    return importance


def compress_plain(layer: LayerState) -> None:
    """The data-free way, for a layer without statistics: magnitude pruning, plain k-means."""
    prune_layer(layer)
    share_layer(layer)


def compress_layer(state: CompressionState, name: str, st: WeightStats, settings: DataAwareSettings,
                   result: DataAwareResult) -> None:
    """Prune and share one planned layer from its input statistics; record what ran in ``result``.

    With ``joint``, the layer is compressed both ways (the joint pass, and today's passes) and keeps
    the one with the smaller output error on the statistics' samples (:func:`layer_error`), so the
    joint pass never leaves a layer worse than the passes it replaces; ``result.joint_lost`` lists
    the layers where it lost.
    """
    layer = state.layers[name]
    if st.view.lookup:
        by_counts, shared = compress_lookup(layer, st, settings.weighted_kmeans)
        if by_counts or shared:
            result.token_counts.append(name)
        return
    original = original_weights(state, name)
    if not settings.joint:
        _compress_matrix(layer, name, original, st, settings, result)
    else:
        start = layer.copy()
        tried = DataAwareResult()
        _compress_matrix(layer, name, original, st, settings, tried)
        joint = layer.copy() if name in tried.joint else None
        if joint is not None:
            joint_error = layer_error(layer.weights, original, st)
            layer.assign(start)
            plain = DataAwareResult()
            _compress_matrix(layer, name, original, st, dataclasses.replace(settings, joint=False), plain)
            if joint_error <= layer_error(layer.weights, original, st):
                layer.assign(joint)
            else:
                tried = plain
                result.joint_lost.append(name)
        _merge(result, tried)
    if settings.bias_correction:
        before = correct_bias(state, name, original, st)
        if before is not None:
            result.bias_corrected.append(name)
            rows = st.view.bias_index()
            result.original_biases[name] = (st.view.bias, rows, before.ravel()[rows])


def _merge(result: DataAwareResult, part: DataAwareResult) -> None:
    """Add the layer names ``part`` recorded per pass to ``result``."""
    for f in ("pruned_by_activation", "reconstructed", "weighted_kmeans", "gptq", "gptq_lost", "joint", "refit"):
        getattr(result, f).extend(getattr(part, f))


def layer_error(weights: np.ndarray, original: np.ndarray, st: WeightStats) -> float:
    """The output error of a layer holding ``weights`` instead of ``original`` on the statistics' samples,
    summed over its views (:func:`onnx_dc.passes.refit.output_error`; zero ``weights``: the output's own size)."""
    total = 0.0
    for p in st.pieces():
        index = p.view.index
        total += output_error(original.ravel()[index], weights.ravel()[index], p.stats.hessian(),
                              p.view.group_of_rows(), p.stats.cross_moment())
    return total


def _compress_matrix(layer: LayerState, name: str, original: np.ndarray, st: WeightStats,
                     settings: DataAwareSettings, result: DataAwareResult) -> None:
    """Prune, re-solve, share, [assign codes GPTQ's way] and refit one matrix layer (no bias correction)."""
    s = layer.entry.settings
    if settings.joint and obs_mask(layer, original, st):
        result.joint.append(name)
    elif settings.prune_by == PruneBy.ACTIVATION:
        prune_layer_by_activation(layer, st, settings.prune_scope)
        if s.prunes and s.prune_quality is None:
            result.pruned_by_activation.append(name)
    else:
        prune_layer(layer)
    if settings.reconstruct and reconstruct_layer(layer, original, st):
        result.reconstructed.append(name)
    # joint, and gptq: unpruned on a layer that prunes nothing: codes GPTQ's way from the re-solved weights
    unpruned_gptq = settings.gptq == "unpruned" and layer.mask is None
    before_sharing = layer.weights.copy() if name in result.joint or unpruned_gptq else None
    importance = None
    if settings.weighted_kmeans:
        importance = kmeans_importance(st, layer.weights.shape)
    if share_layer(layer, importance) and importance is not None:
        result.weighted_kmeans.append(name)
    if before_sharing is not None:
        kept = layer.copy() if unpruned_gptq else None
        error = layer_error(layer.weights, original, st) if kept is not None else 0.0
        if gptq_layer(layer, before_sharing, st):
            if kept is not None and layer_error(layer.weights, original, st) > error:
                layer.assign(kept)  # the nearest codes were closer on these samples
                result.gptq_lost.append(name)
            else:
                result.gptq.append(name)
    elif settings.gptq is True and gptq_layer(layer, original, st):
        result.gptq.append(name)
    if settings.refit and refit_layer(layer, original, st):
        result.refit.append(name)


def run_data_aware(state: CompressionState, stats: dict[str, WeightStats], settings: DataAwareSettings,
                   without_stats: Mapping[str, str] | None = None) -> DataAwareResult:
    """Prune and share every planned layer using its input statistics (see the module docstring)."""
    result = DataAwareResult(without_stats=dict(without_stats or {}))
    for name, layer in progress.bar(state.layers.items(), total=len(state.layers), desc="data-aware", unit="layer"):
        if name in stats:
            compress_layer(state, name, stats[name], settings, result)
        else:
            compress_plain(layer)
    return result
