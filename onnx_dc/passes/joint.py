"""Joint pruning and sharing with error compensation (Optimal Brain Compression / SparseGPT style).

For a layer ``y = W2 x`` with ``H = E[x x^T]`` (damped as in :mod:`onnx_dc.passes.gptq`) and ``U``
the upper Cholesky factor of ``H^-1``, the columns are taken in blocks of ``BLOCK``. At the start of
a block, on the weights as the earlier columns' updates left them, each row prunes the
``floor(sparse_ratio * block)`` columns of the block with the smallest OBS saliency

    s_ij = w_ij^2 / U_jj^2

(the output error that removing w_ij alone costs once the later columns compensate it), and each
pruned column's error is spread over the columns not yet visited:

    e_j = (w_j * pruned_j) / U_jj,      w_{j'} -= e_j U_{j j'}   for j' > j

That chooses the mask (:func:`obs_mask`). The data-aware passes then re-solve the kept weights by
least squares on that mask (reconstruct), share them by weighted k-means, and assign the codes
GPTQ's way starting from the re-solved weights (``gptq_layer(layer, reconstructed, stats)``): since
the re-solved weights leave an error orthogonal to every kept input, compensating the codes' error
towards them is compensating it towards the original layer's output. Off by default (``calib: joint``).
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.gptq import upper_inverse_cholesky
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

BLOCK = 16  # columns per mask decision (on a correlated 64-input layer: 16 beat 8, 64 and 128)


def obs_mask(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    """Prune one layer by OBS saliency with error compensation, block by block; returns whether it ran."""
    s = layer.entry.settings
    pieces = stats.pieces()
    if not s.prunes or s.prune_quality is not None or any(p.stats.hessian() is None for p in pieces):
        return False
    keep = np.ones(layer.weights.size, bool)
    for piece in pieces:
        index = piece.view.index
        keep[index.ravel()] = _view_mask(original.ravel()[index], piece, s.sparse_ratio).ravel()
    mask = keep.reshape(layer.weights.shape) & (original != 0)
    if layer.mask is not None:
        mask &= layer.mask
    layer.mask = mask
    layer.threshold = -1.0  # saliency scores: no single magnitude threshold
    layer.weights = np.where(mask, original, np.float32(0.0)).astype(np.float32)
    return True


def _view_mask(w2: np.ndarray, stats: WeightStats, ratio: float) -> np.ndarray:
    """Keep-mask ``[out, in]`` of one view."""
    hessian = stats.stats.hessian()
    groups = stats.view.group_of_rows()
    keep2 = np.ones(w2.shape, bool)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        u = upper_inverse_cholesky(hessian[g])
        d2 = np.square(np.diag(u))
        w = w2[rows].astype(np.float64)
        for start in range(0, w.shape[1], BLOCK):
            stop = min(start + BLOCK, w.shape[1])
            k = int(np.floor(ratio * (stop - start)))
            block_keep = np.ones((rows.size, stop - start), bool)
            if k > 0:
                saliency = np.square(w[:, start:stop]) / d2[start:stop]
                lowest = np.argpartition(saliency, k - 1, axis=1)[:, :k]
                np.put_along_axis(block_keep, lowest, False, axis=1)
            keep2[rows, start:stop] = block_keep
            for j in range(start, stop):
                err = np.where(block_keep[:, j - start], 0.0, w[:, j]) / u[j, j]
                w[:, j + 1 :] -= np.outer(err, u[j, j + 1 :])
    return keep2
