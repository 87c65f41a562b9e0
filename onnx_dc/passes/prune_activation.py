"""Data-aware pruning: score each weight by what it contributes on the calibration inputs.

    score_ij = |W2_ij| * sqrt(E[x_j^2])       (W2: the layer as [out, in], x: its input rows)
    scope row:   in each output row i, the floor(sparse_ratio * in) lowest scores are pruned
    scope layer: the floor(sparse_ratio * out * in) lowest scores of the whole layer are pruned
                 (ties at the threshold go too)
    and every weight that is exactly zero (as magnitude pruning's |w| > t does)

``sqrt(E[x_j^2])`` is the input activation norm ``||x_j||`` up to a constant, so a weight on
an input that is always near zero goes first however large it is. Comparing within a row
(output channel) keeps every output alive at the planned ratio and does not depend on the
scale of each output channel (a folded BatchNorm's); comparing over the layer lets rows that
need more of their inputs keep them. Measured without fine-tuning on the samples of
scripts/bench_distill.py, layer is better on fully connected and recurrent layers
(LeNet-300-100 at 0.9 / 32, held-out cosine .963 -> .995; DTLN model_2 at 0.5 / 32,
.9887 -> .9915) and worse on convnets with folded BatchNorm (FastestDet .905 -> .886, gtcrn
.982 -> .972), so row is the default.
Layers set by ``prune_quality`` (a threshold, not a ratio) and layers without statistics
are pruned by magnitude as before.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.prune import prune_layer
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

_CHUNK = 1 << 24  # elements of a block of rows in row_mask


def row_mask(scores: np.ndarray, sparse_ratio: float) -> np.ndarray:
    """Keep-mask ``[out, in]`` pruning the ``floor(sparse_ratio * in)`` lowest scores of every row."""
    k = int(np.floor(sparse_ratio * scores.shape[1]))
    mask = np.ones(scores.shape, bool)
    if k > 0:
        step = max(1, _CHUNK // max(1, scores.shape[1]))  # argpartition's int64 indices, a block of rows at a time
        for s in range(0, scores.shape[0], step):
            lowest = np.argpartition(scores[s : s + step], k - 1, axis=1)[:, :k]
            np.put_along_axis(mask[s : s + step], lowest, False, axis=1)
    return mask


def layer_mask(scores: np.ndarray, sparse_ratio: float) -> np.ndarray:
    """Keep-mask pruning the ``floor(sparse_ratio * scores.size)`` lowest scores of the whole array (and ties)."""
    k = int(np.floor(sparse_ratio * scores.size))
    if k == 0:
        return np.ones(scores.shape, bool)
    threshold = np.partition(scores.ravel(), k - 1)[k - 1]
    return scores > threshold


def prune_layer_by_activation(layer: LayerState, stats: WeightStats, scope: str = "row") -> bool:
    """Prune one layer by ``|w| * ||x||`` within rows (``scope`` "row") or over the layer ("layer")."""
    s = layer.entry.settings
    if not s.prunes or s.prune_quality is not None:
        return prune_layer(layer)
    flat = layer.weights.ravel()
    pieces = stats.pieces()  # a fused weight: each view's elements scored by its own inputs
    mask = np.zeros(flat.size, bool)
    if scope == "layer":  # float32 scores of the whole layer (4096 x 25088: 411 MB)
        scores = [np.abs(flat[p.view.index]) * np.sqrt(p.column_moment()).astype(np.float32) for p in pieces]
        joined = scores[0] if len(scores) == 1 else np.concatenate([sc.ravel() for sc in scores])  # no copy for one
        keep = layer_mask(joined, s.sparse_ratio).ravel()
        start = 0
        for p, sc in zip(pieces, scores):
            mask[p.view.index.ravel()] = keep[start : start + sc.size]
            start += sc.size
    else:
        for p in pieces:
            index = p.view.index
            norms = np.sqrt(p.column_moment())  # [1, in] (one group) or [out, in]
            keep2 = np.empty(index.shape, bool)
            step = max(1, _CHUNK // max(1, index.shape[1]))  # float64 scores a block of rows at a time
            for r in range(0, index.shape[0], step):
                rows = slice(r, r + step)
                keep2[rows] = row_mask(np.abs(flat[index[rows]]) * (norms if norms.shape[0] == 1 else norms[rows]),
                                       s.sparse_ratio)
            mask[index.ravel()] = keep2.ravel()
    mask = mask.reshape(layer.weights.shape)
    if layer.mask is not None:
        mask &= layer.mask
    mask &= layer.weights != 0  # exact zeros (a fixed filterbank's, say) are pruned as magnitude pruning does
    layer.mask = mask
    layer.threshold = -1.0  # activation scores: no single magnitude threshold
    layer.weights = np.where(mask, layer.weights, np.float32(0.0)).astype(np.float32)
    return True
