"""Codebook refit: with the codes fixed, the codebook that best reproduces the layer's outputs.

For a layer ``y = W2 x`` with codes ``q`` (``W_q[i, j] = c[q_ij]``, ``c_0 = 0`` fixed) and
``H = E[x x^T]`` over the calibration inputs (per group), the output error

    L(c) = sum_i (w_i - A_i c)^T H (w_i - A_i c),    A_i[j, k] = [q_ij == k]

is quadratic in ``c``; its minimum solves the K x K normal equations

    M c = r,   M = sum_i A_i^T H A_i,   r = sum_i A_i^T H w_i.

``M`` is built from ``H A_i`` on at most 256 rows, ``r`` from ``W2 H``. A
small ridge towards the k-means codebook keeps unused or collinear codes where they were;
a refit that does not lower ``L`` on the calibration data is discarded, so the output
error never rises over plain k-means on the same codes.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.share import set_codebook
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

_RIDGE = 1e-6
_CHUNK = 1 << 23  # elements of H A_i built at a time
MAX_ROWS = 256


def output_error(w2: np.ndarray, wq2: np.ndarray, hessian: np.ndarray, groups: np.ndarray) -> float:
    """``sum_i (w_i - wq_i)^T H_g(i) (w_i - wq_i)``: the summed squared output error per input row."""
    d = (w2 - wq2).astype(np.float64)
    total = 0.0
    for g in np.unique(groups):
        dg = d[groups == g]
        total += float(np.sum((dg @ hessian[g]) * dg))
    return total


def normal_equations(w2: np.ndarray, q2: np.ndarray, hessian: np.ndarray, groups: np.ndarray, k: int):
    """``M`` ``[k, k]`` and ``r`` ``[k]`` of the module docstring (codes ``0..k-1``).

    ``H A_i`` is a sparse product per chunk of rows; at most ``MAX_ROWS`` rows (a fixed seeded choice) enter the sums: ``M`` and ``r`` scale
    alike, and K unknowns are well determined by far fewer rows.
    """
    from scipy import sparse

    m = np.zeros((k, k))
    r = np.zeros(k)
    cols = q2.shape[1]
    rng = np.random.default_rng(0)
    for g in np.unique(groups):
        h = hessian[g]
        sel = np.flatnonzero(groups == g)
        if sel.size > MAX_ROWS:
            sel = np.sort(rng.choice(sel, MAX_ROWS, replace=False))
        r += np.bincount(q2[sel].ravel(), weights=(w2[sel].astype(np.float64) @ h).ravel(), minlength=k)
        step = max(1, _CHUNK // max(1, cols * k))
        for s in range(0, sel.size, step):
            part = sel[s : s + step]
            n = part.size
            # S[j, i * k + q_ij] = 1, so (S^T H)[i * k + l, :] sums H's rows of code l in row i
            row_ids = (np.arange(n)[:, None] * k + q2[part]).ravel()
            col_ids = np.tile(np.arange(cols), n)
            s_t = sparse.csr_matrix((np.ones(row_ids.size), (row_ids, col_ids)), shape=(n * k, cols))
            ha = np.asarray(s_t @ h).reshape(n, k, cols)  # [i, l, j] = (H A_i)[j, l]
            codes = q2[part].ravel()
            for l in range(k):
                m[:, l] += np.bincount(codes, weights=ha[:, l, :].ravel(), minlength=k)
    return m, r


def refit_layer(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    """Refit one shared layer's codebook; returns whether the codebook changed."""
    hessian = stats.stats.hessian()
    if layer.codebook is None or hessian is None:
        return False
    index = stats.view.index
    w2 = original.ravel()[index]
    q2 = layer.codes.ravel()[index].astype(np.int64)
    groups = stats.view.group_of_rows()
    k = layer.codebook.size
    before = output_error(w2, layer.codebook[q2], hessian, groups)
    m, r = normal_equations(w2, q2, hessian, groups, k)
    old = layer.codebook.astype(np.float64)
    m, r, old = m[1:, 1:], r[1:], old[1:]  # c_0 = 0 is fixed
    lam = _RIDGE * max(float(np.trace(m)) / max(m.shape[0], 1), 1e-30)
    try:
        c = np.linalg.solve(m + lam * np.eye(m.shape[0]), r + lam * old)
    except np.linalg.LinAlgError:
        return False
    codebook = np.concatenate(([0.0], c)).astype(np.float32)
    if not np.all(np.isfinite(codebook)) or output_error(w2, codebook[q2], hessian, groups) >= before:
        return False
    set_codebook(layer, codebook)
    return True
