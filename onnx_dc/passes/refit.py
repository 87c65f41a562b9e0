"""Codebook refit: with the codes fixed, the codebook that best reproduces the layer's outputs.

For a layer ``y = W2 x`` with codes ``q`` (``W_q[i, j] = c[q_ij]``; in a pruned layer ``c_0 = 0`` is fixed) and
``H = E[x x^T]`` over the calibration inputs (per group), the output error

    L(c) = sum_i (w_i - A_i c)^T H (w_i - A_i c),    A_i[j, k] = [q_ij == k]

is quadratic in ``c``; its minimum solves the K x K normal equations

    M c = r,   M = sum_i A_i^T H A_i,   r = sum_i A_i^T H w_i.

``M`` is built from ``H A_i`` on at most 256 rows, ``r`` from ``W2 H``. With sequential
statistics the target is the original layer's output on the original input ``x_o``:
``r = sum_i A_i^T E[x x_o^T] w_i`` and ``L`` gains the cross term accordingly. A
small ridge towards the k-means codebook keeps unused or collinear codes where they were;
a refit that does not lower ``L`` on the calibration data is discarded, so the output
error never rises over plain k-means on the same codes.

With channel scales (``codebook: channel``) ``W_q[i, j] = s_ij c[q_ij]``: ``A_i[j, k] = s_ij [q_ij == k]``
and the same equations hold (``s2`` below, the scale of each element of ``W2``). With the codebook
fixed, each channel's scale then has its own least-squares optimum: over the channel's rows, with
``u_i = c[q_i]``,

    s = sum_i u_i^T E[x x_o^T] w_i / sum_i u_i^T H u_i          (``H`` in place of the cross moment
                                                               without sequential statistics)

rounded to float16; codebook and scales are refit in turn (:data:`SCALE_ROUNDS` times), each
round kept only when it lowers ``L``.

With a codebook per group of rows (``codebook: group``) the unknowns of different groups never meet in a
row, so ``M`` is block-diagonal: each group's k values are solved from its own rows (codes taken within
the group), and kept when they lower that group's part of ``L``.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.share import set_codebook
from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

_RIDGE = 1e-6
_CHUNK = 1 << 23  # elements of H A_i built at a time
MAX_ROWS = 256
SCALE_ROUNDS = 2


def output_error(w2: np.ndarray, wq2: np.ndarray, hessian: np.ndarray, groups: np.ndarray,
                 cross: np.ndarray | None = None) -> float:
    """``sum_i (w_i - wq_i)^T H_g(i) (w_i - wq_i)``: the summed squared output error per input row.

    With ``cross`` (``E[x x_o^T]``, sequential statistics): ``sum_i E[(w_i^T x_o - wq_i^T x)^2]``,
    its ``w^T E[x_o x_o^T] w`` term (not collected, the same for any ``wq``) taken as ``w^T H w``.
    """
    total = 0.0
    for g in np.unique(groups):
        w, q = w2[groups == g].astype(np.float64), wq2[groups == g].astype(np.float64)
        if cross is None:
            d = w - q
            total += float(np.sum((d @ hessian[g]) * d))
        else:
            total += float(np.sum((q @ hessian[g]) * q) - 2 * np.sum((q @ cross[g]) * w) + np.sum((w @ hessian[g]) * w))
    return total


def normal_equations(w2: np.ndarray, q2: np.ndarray, hessian: np.ndarray, groups: np.ndarray, k: int,
                     cross: np.ndarray | None = None, s2: np.ndarray | None = None):
    """``M`` ``[k, k]`` and ``r`` ``[k]`` of the module docstring (codes ``0..k-1``).

    ``H A_i`` is a sparse product per chunk of rows; at most ``MAX_ROWS`` rows of a group (a fixed seeded choice) enter
    the sums, K unknowns being well determined by far fewer rows, and count for all the group's rows (scaled by
    rows / chosen), so groups, and the views of a fused weight summed by the caller, keep their weight. ``cross`` (``E[x x_o^T]``,
    sequential statistics) replaces ``H`` in ``r``. ``s2``: the scale of each element (None: 1).
    """
    from scipy import sparse

    m = np.zeros((k, k))
    r = np.zeros(k)
    cols = q2.shape[1]
    rng = np.random.default_rng(0)
    for g in np.unique(groups):
        h = hessian[g]
        sel = np.flatnonzero(groups == g)
        weight = 1.0
        if sel.size > MAX_ROWS:
            weight = sel.size / MAX_ROWS
            sel = np.sort(rng.choice(sel, MAX_ROWS, replace=False))
        target = h if cross is None else cross[g].T
        projected = w2[sel].astype(np.float64) @ target
        if s2 is not None:
            projected *= s2[sel]
        r += weight * np.bincount(q2[sel].ravel(), weights=projected.ravel(), minlength=k)
        step = max(1, _CHUNK // max(1, cols * k))
        for s in range(0, sel.size, step):
            part = sel[s : s + step]
            n = part.size
            # S[j, i * k + q_ij] = 1, so (S^T H)[i * k + l, :] sums H's rows of code l in row i
            row_ids = (np.arange(n)[:, None] * k + q2[part]).ravel()
            col_ids = np.tile(np.arange(cols), n)
            entries = np.ones(row_ids.size) if s2 is None else s2[part].astype(np.float64).ravel()
            s_t = sparse.csr_matrix((entries, (row_ids, col_ids)), shape=(n * k, cols))
            ha = np.asarray(s_t @ h).reshape(n, k, cols)  # [i, l, j] = (H A_i)[j, l]
            codes = q2[part].ravel()
            for l in range(k):
                terms = ha[:, l, :] if s2 is None else ha[:, l, :] * s2[part]
                m[:, l] += weight * np.bincount(codes, weights=terms.ravel(), minlength=k)
    return m, r


def refit_layer(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    """Refit one shared layer's codebook (and channel scales); returns whether anything changed."""
    pieces = stats.pieces()  # a fused weight: the error summed over its views, each with its own inputs
    if layer.codebook is None or any(p.stats.hessian() is None for p in pieces):
        return False
    changed = _refit_codebook(layer, original, pieces)
    if layer.scale is not None:
        for _ in range(SCALE_ROUNDS):
            if not _refit_scales(layer, original, pieces):
                break
            changed = True
            _refit_codebook(layer, original, pieces)
    return changed


def _parts(layer: LayerState, original: np.ndarray, pieces) -> list[tuple]:
    parts = []
    for p in pieces:
        index = p.view.index
        s2 = None if layer.scale is None else layer.scale_at(index).astype(np.float64)
        parts.append((original.ravel()[index], layer.codes.ravel()[index].astype(np.int64), p.stats.hessian(),
                      p.view.group_of_rows(), p.stats.cross_moment(), s2))
    return parts


def _error(parts: list[tuple], codebook: np.ndarray) -> float:
    return sum(output_error(w2, codebook[q2] if s2 is None else codebook[q2] * s2, h, groups, cross)
               for w2, q2, h, groups, cross, s2 in parts)


def _refit_codebook(layer: LayerState, original: np.ndarray, pieces) -> bool:
    if layer.group_rows:
        return _refit_groups(layer, original, pieces)
    k = layer.codebook.size
    parts = _parts(layer, original, pieces)
    before = _error(parts, layer.codebook)
    m, r = np.zeros((k, k)), np.zeros(k)
    for w2, q2, h, groups, cross, s2 in parts:
        mp, rp = normal_equations(w2, q2, h, groups, k, cross, s2)
        m += mp
        r += rp
    fitted = _solve(m, r, layer.codebook.astype(np.float64), int(layer.reserves_zero))
    if fitted is None:
        return False
    codebook = fitted.astype(np.float32)
    if _error(parts, codebook) >= before:
        return False
    set_codebook(layer, codebook)
    return True


def _solve(m: np.ndarray, r: np.ndarray, old: np.ndarray, z: int) -> np.ndarray | None:
    """The codebook solving ``M c = r`` with a pruned layer's ``c_0 = 0`` fixed and the ridge towards ``old``."""
    m, r, old = m[z:, z:], r[z:], old[z:]
    lam = _RIDGE * max(float(np.trace(m)) / max(m.shape[0], 1), 1e-30)
    try:
        c = np.linalg.solve(m + lam * np.eye(m.shape[0]), r + lam * old)
    except np.linalg.LinAlgError:
        return None
    return np.concatenate(([0.0] * z, c)) if np.all(np.isfinite(c)) else None


def _refit_groups(layer: LayerState, original: np.ndarray, pieces) -> bool:
    """Each group's values for the present codes (module docstring); whether any group's changed.

    Only when every row of every view lies in one group (the groups' axis is the views' output axis).
    """
    k, z = layer.group_size(), int(layer.reserves_zero)
    parts, books = _parts(layer, original, pieces), []
    for p in pieces:
        book = layer.group_of(p.view.index)
        if not np.all(book == book[:, :1]):
            return False
        books.append(book[:, 0])
    codebook = layer.codebook.astype(np.float64)
    changed = False
    for b in np.unique(np.concatenate(books)):
        span = slice(z + b * k, z + (b + 1) * k)
        mine = []  # this group's rows of each view, codes within the group
        for (w2, q2, h, groups, cross, _), book in zip(parts, books):
            sel = np.flatnonzero(book == b)
            if sel.size:
                q = q2[sel] - b * k * ((q2[sel] > 0) if z else 1)
                mine.append((w2[sel], q, h, groups[sel], cross))
        local = np.concatenate((codebook[:z], codebook[span]))
        m, r = np.zeros((z + k, z + k)), np.zeros(z + k)
        for w2, q, h, groups, cross in mine:
            mp, rp = normal_equations(w2, q, h, groups, z + k, cross)
            m += mp
            r += rp
        fitted = _solve(m, r, local, z)
        if fitted is None:
            continue
        before = sum(output_error(w2, local[q], h, groups, cross) for w2, q, h, groups, cross in mine)
        if sum(output_error(w2, fitted[q], h, groups, cross) for w2, q, h, groups, cross in mine) < before:
            codebook[span] = fitted[z:]
            changed = True
    if changed:
        set_codebook(layer, codebook)
    return changed


def _refit_scales(layer: LayerState, original: np.ndarray, pieces) -> bool:
    """Each channel's least-squares scale for the present codes and codebook (module docstring); whether kept.

    Only when every row of every view lies in one channel (the scale axis is the views' output axis).
    """
    num, den = np.zeros(layer.scale.size), np.zeros(layer.scale.size)
    for p in pieces:
        index = p.view.index
        channel = layer.channel_of(index)
        if not np.all(channel == channel[:, :1]):
            return False
        rows_channel = channel[:, 0]
        u = layer.codebook[layer.codes.ravel()[index]].astype(np.float64)
        w = original.ravel()[index].astype(np.float64)
        groups, h, cross = p.view.group_of_rows(), p.stats.hessian(), p.stats.cross_moment()
        for g in np.unique(groups):
            sel = np.flatnonzero(groups == g)
            uh = u[sel] @ h[g]
            target = uh if cross is None else u[sel] @ cross[g]
            np.add.at(den, rows_channel[sel], np.sum(uh * u[sel], axis=1))
            np.add.at(num, rows_channel[sel], np.sum(target * w[sel], axis=1))
    old = layer.scale
    with np.errstate(divide="ignore", invalid="ignore"):
        fitted = (num / den).astype(np.float16).astype(np.float32)
    # positive only: a pruned weight decodes to +0.0 however the decoder applies the scale
    new = np.where((den > 0) & np.isfinite(fitted) & (fitted > 0), fitted, old).astype(np.float32)
    if np.array_equal(new, old):
        return False
    before = _error(_parts(layer, original, pieces), layer.codebook)
    layer.scale = new
    if _error(_parts(layer, original, pieces), layer.codebook) >= before:
        layer.scale = old
        return False
    layer.weights = layer.shared_values()
    return True
