"""Magnitude pruning pass.

    t = quantile(|W|, sparse_ratio)   (or t = prune_quality * std(W))
    mask = |W| > t,   W' = W * mask

The mask is kept in the layer state: fine-tuning keeps pruned weights at exactly zero,
and weight sharing clusters only the kept weights. Pruning an already-pruned layer
again only removes more (the new mask is ANDed with the old one).
"""

from __future__ import annotations

import numpy as np

from onnx_dc import progress
from onnx_dc.numerics.prune import magnitude_mask, quality_threshold, ratio_threshold
from onnx_dc.passes.state import CompressionState, LayerState


def prune_layer(layer: LayerState, sparse_ratio: float | None = None, prune_quality: float | None = None) -> bool:
    """Prune one layer by its settings; returns whether anything was pruned.

    ``sparse_ratio`` / ``prune_quality`` override the planned setting for this call (the
    intermediate steps of a layer-wise or iterative pruning schedule).
    """
    s = layer.entry.settings
    if sparse_ratio is None and prune_quality is None:
        if not s.prunes:
            return False
        sparse_ratio, prune_quality = s.sparse_ratio, s.prune_quality
    w = layer.weights
    t = quality_threshold(w, prune_quality) if prune_quality is not None else ratio_threshold(w, sparse_ratio)
    if t < 0:
        return False
    mask = magnitude_mask(w, t)
    if layer.mask is not None:
        mask &= layer.mask
    layer.mask = mask
    layer.threshold = t
    layer.weights = np.where(mask, w, np.float32(0.0))
    return True


def prune(state: CompressionState, only: set[str] | None = None) -> int:
    """Prune every planned layer (or only those named in ``only``); returns how many changed."""
    layers = [layer for name, layer in state.layers.items() if only is None or name in only]
    return sum(prune_layer(layer) for layer in progress.bar(layers, desc="prune", unit="layer"))
