"""GPTQ-style code assignment: assign codes column by column, spreading each column's error
onto the columns not yet assigned.

For a layer ``y = W2 x`` with ``H = E[x x^T]`` (damped by 1% of its mean diagonal), let
``U`` be the upper Cholesky factor of ``H^-1``. Starting from the original weights, for
each input column ``j`` in order (all rows at once):

    q_j = 0 if pruned else the nearest codebook entry (code >= 1),
    e_j = (w_j - q_j) / U_jj,      w_{j'} -= e_j U_{j j'}   for j' > j

which is the optimal update of the not-yet-assigned weights for the error made on column
``j`` (Frantar et al., GPTQ, 2022; with a pruning mask this is SparseGPT's update). The
codebook (from k-means) and the mask stay; only the codes change. It replaces the plain
nearest-centroid codes, so it runs after sharing and before the codebook refit. With
channel scales (``codebook: channel``) row ``i``'s entries are ``s_i c_k``: the nearest to
``w_ij / s_i`` is chosen and ``q_j = s_i c``. With a codebook per group of rows (``codebook: group``)
each weight's nearest entry is sought in its own group's codebook.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.numerics.kmeans import assign
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

DAMPING = 0.01


def upper_inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """``U`` with ``U^T U = (H + damping)^-1``, upper triangular."""
    h = h + DAMPING * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(h.shape[0])
    hinv = np.linalg.inv(h)
    return np.linalg.cholesky((hinv + hinv.T) / 2).T


def gptq_layer(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    """Re-assign one shared layer's codes as above; returns whether it ran (on every view of a fused
    weight, each on its own elements)."""
    ran = [_gptq_view(layer, original, piece) for piece in stats.pieces()]
    return any(ran)


def _gptq_view(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    hessian = stats.stats.hessian()
    if layer.codebook is None or hessian is None:
        return False
    index = stats.view.index
    groups = stats.view.group_of_rows()
    keep2 = np.ones(index.shape, bool) if layer.mask is None else layer.mask.ravel()[index]
    z = int(layer.reserves_zero)  # centroids start after a pruned layer's reserved zero
    order = np.argsort(layer.codebook[z:], kind="stable")
    centroids = layer.codebook[z:][order].astype(np.float64)
    codes2 = np.zeros(index.shape, layer.codes.dtype)
    scale2 = layer.scale_at(index).astype(np.float64)  # codebook: channel (1.0 without)
    if layer.group_rows:  # codebook: group: each weight's group, and the groups' values [groups, k]
        book2 = layer.group_of(index)
        table = layer.codebook[z:].astype(np.float64).reshape(layer.groups(), -1)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        u = upper_inverse_cholesky(hessian[g])
        w = original.ravel()[index[rows]].astype(np.float64)
        s = scale2[rows]
        for j in range(w.shape[1]):
            if layer.group_rows:  # the nearest of the weight's own group's values
                book = book2[rows, j]
                nearest = book * table.shape[1] + np.abs(w[:, j, None] - table[book]).argmin(axis=1) + z
            else:
                nearest = order[assign(w[:, j] / s[:, j], centroids)] + z
            code = np.where(keep2[rows, j], nearest, 0)
            err = (w[:, j] - s[:, j] * layer.codebook[code]) / u[j, j]
            w[:, j + 1 :] -= np.outer(err, u[j, j + 1 :])
            codes2[rows, j] = code
    codes = layer.codes.ravel().copy()
    codes[index.ravel()] = codes2.ravel()
    layer.codes = codes.reshape(layer.weights.shape)
    layer.weights = layer.shared_values()
    return True
