"""Embedding tables (Gather) compressed by how often each row is read.

A Gather returns row ``r`` of the table ``W`` for every index ``r``, so the error a change ``dW``
makes over the calibration tokens is

    sum_r c_r ||dW_r||^2,      c_r = how often index r occurs among the real tokens

(the one-hot view of :mod:`onnx_dc.graph.layerview`: ``E[x_r^2] = c_r / n``). Rows are weighted by
``1 + c_r``: a row no sample reaches counts as if read once, so among those rows every weight
counts alike, as in the data-free way.

    prune, rows some sample reaches:   the sparse_ratio share of lowest (1 + c_r) w^2 of those rows
    prune, rows no sample reaches:     the sparse_ratio share of lowest |w| of those rows (magnitude
                                       pruning, the data-free result: calibration says nothing of them)
    share: k-means weighted by 1 + c_r

Frequent tokens keep more of their row and pull the shared values toward their weights. A
layer set by ``prune_quality`` (a threshold, not a ratio) is pruned by magnitude.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.prune import prune_layer
from onnx_dc.passes.prune_activation import layer_mask
from onnx_dc.passes.share import share_layer
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats


def row_counts(stats: WeightStats) -> np.ndarray:
    """How often each table row was read (over the real tokens of the calibration samples)."""
    return stats.stats.squares[0].copy()


def row_weights(stats: WeightStats, shape: tuple[int, ...]) -> np.ndarray:
    """``1 + c_r`` for every element of the stored table (its row's count), in ``shape``."""
    weights = np.empty(int(np.prod(shape)))
    weights[stats.view.index] = 1.0 + row_counts(stats)  # index [width, rows]: column r holds row r's elements
    return weights.reshape(shape)


def prune_lookup(layer: LayerState, stats: WeightStats) -> bool:
    """Prune a table: read rows by ``(1 + c_r) w^2``, unread rows by magnitude, each at the planned ratio."""
    s = layer.entry.settings
    if not s.prunes or s.prune_quality is not None:
        return prune_layer(layer)
    flat = layer.weights.ravel()
    weights = row_weights(stats, layer.weights.shape).ravel()
    seen = weights > 1.0
    mask = np.zeros(flat.size, bool)
    for part, scores in ((seen, weights * np.square(flat)), (~seen, np.abs(flat))):
        if part.any():
            mask[part] = layer_mask(scores[part], s.sparse_ratio)
    mask = mask.reshape(layer.weights.shape)
    if layer.mask is not None:
        mask &= layer.mask
    mask &= layer.weights != 0
    layer.mask = mask
    layer.threshold = -1.0  # two scores: no single magnitude threshold
    layer.weights = np.where(mask, layer.weights, np.float32(0.0)).astype(np.float32)
    return True


def compress_lookup(layer: LayerState, stats: WeightStats, weighted_kmeans: bool = True) -> tuple[bool, bool]:
    """Prune and share one table by its row counts; returns (pruned by counts, shared by weighted k-means)."""
    pruned = prune_lookup(layer, stats)
    by_counts = pruned and layer.entry.settings.prunes and layer.entry.settings.prune_quality is None
    importance = row_weights(stats, layer.weights.shape) if weighted_kmeans else None
    shared = share_layer(layer, importance) and importance is not None
    return by_counts, shared
