"""Pruning reconstruction: re-solve each row's kept weights so the layer's outputs stay close.

For output row ``w`` of ``y = W2 x`` with kept columns ``S`` (pruned ones fixed at zero) and
``H = E[x x^T]`` on the calibration inputs,

    w'_S = argmin_v (w - v)^T H (w - v) + l |v_S - w_S|^2 with v_{not S} = 0
         =>   (H_SS + l I) w'_S = (H w)_S + l w_S

(the optimal-brain-surgeon update restricted to the kept set). The damping ``l`` (1% of the
mean diagonal) pulls toward the original weights, not toward zero: where the samples do not
span the input space (fewer samples than input width, as a 512-wide recurrent layer on a few
hundred frames), the directions they never excite keep the original row's response, and a
row that lost nothing keeps its weights exactly. Damping toward zero instead shrank those
directions away: DTLN's second model at 0.5 / 32 on 240 frames, held-out cosine .955 against
.974 now.

With sequential statistics (``x`` from the model whose upstream layers are compressed,
``x_o`` the original's) the target is the original layer's output,
``min E[(w^T x_o - v^T x)^2]``, and ``H w`` becomes ``E[x x_o^T] w``. It runs after pruning and before
sharing, so k-means clusters the reconstructed values. Needs the full ``H`` (layers whose
input width is under the collection's size limit); rows are solved in batches. A layer
whose solves would cost more than ``MAX_FLOPS`` (rows x kept^3, about 1.5-3 s of batched
solves at 1e11 on two cores; VGG-16's 3x3 convolutions on 256 channels and more, 8 s to 3 min
each) is left as pruned. The limit was 2e9, which skipped DTLN model_2's 512 -> 256
encoder (4.3e9; held-out cosine .974 -> .978 with it, .9859 -> .9888 on 960 frames).

A layer that prunes nothing (``sparse_ratio: 0``) is re-solved too when the statistics are
sequential: every row keeps every column, so one solve per view, ``(H + l I) W'^T = E[x x_o^T] W^T +
l W^T``, corrects the error arriving from upstream before sharing. Without it such a layer only
met upstream error at the refit of its K shared values: ResNet-20 at 0 / 16 (64 samples) held-out
worst cosine .9809, against .9920 at 0.01 / 16, which re-solved. With statistics from the original
model (not paired) the solve would return ``W`` itself, and is skipped.
"""

from __future__ import annotations

import numpy as np

from onnx_dc.passes.state import LayerState
from onnx_dc.passes.stats import WeightStats

DAMPING = 0.01
MAX_FLOPS = 1e11
_BATCH_ELEMENTS = 1 << 24


def reconstruct_layer(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    """Replace a pruned layer's kept weights by the least-squares fit above; returns whether it ran
    (on every view of a fused weight, each on its own elements)."""
    ran = [_reconstruct_view(layer, original, piece) for piece in stats.pieces()]
    return any(ran)


def _reconstruct_view(layer: LayerState, original: np.ndarray, stats: WeightStats) -> bool:
    hessian, cross = stats.stats.hessian(), stats.stats.target_cross()
    if hessian is None or (layer.mask is None and stats.stats.cross_moment() is None):
        return False
    index = stats.view.index
    w2 = original.ravel()[index].astype(np.float64)
    if layer.mask is None:
        _solve_unpruned(layer, w2, index, hessian, cross, stats.view.group_of_rows())
        return True
    keep2 = layer.mask.ravel()[index]
    groups = stats.view.group_of_rows()
    new2 = np.zeros_like(w2)
    counts = keep2.sum(axis=1)
    if float(np.sum(counts.astype(np.float64) ** 3)) > MAX_FLOPS:
        return False
    for g in np.unique(groups):
        h = hessian[g]
        h, lam = _damped(h)
        # E[x x_o^T] w_i for every row (H w_i when not sequential), plus the damping's pull toward w_i
        hw = w2 @ cross[g].T + lam * w2
        for count in np.unique(counts[groups == g]):
            rows = np.flatnonzero((groups == g) & (counts == count))
            if count == 0:
                continue
            step = max(1, _BATCH_ELEMENTS // (count * count))
            for s in range(0, rows.size, step):
                part = rows[s : s + step]
                cols = np.nonzero(keep2[part])[1].reshape(part.size, count)
                a = h[cols[:, :, None], cols[:, None, :]]
                b = np.take_along_axis(hw[part], cols, axis=1)
                sol = np.linalg.solve(a, b[..., None])[..., 0]
                block = np.zeros((part.size, w2.shape[1]))
                np.put_along_axis(block, cols, sol, axis=1)
                new2[part] = block
    flat = layer.weights.ravel().copy()
    flat[index.ravel()] = new2.ravel().astype(np.float32)
    layer.weights = (flat.reshape(layer.weights.shape) * layer.mask).astype(np.float32)
    return True


def _solve_unpruned(layer: LayerState, w2: np.ndarray, index: np.ndarray, hessian: np.ndarray,
                    cross: np.ndarray, groups: np.ndarray) -> None:
    """Every row of the view keeps every column: one damped solve per group of rows shares its matrix."""
    new2 = np.empty_like(w2)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        h, lam = _damped(hessian[g])
        rhs = cross[g] @ w2[rows].T + lam * w2[rows].T
        new2[rows] = np.linalg.solve(h, rhs).T
    flat = layer.weights.ravel().copy()
    flat[index.ravel()] = new2.ravel().astype(np.float32)
    layer.weights = flat.reshape(layer.weights.shape).astype(np.float32)


def _damped(h: np.ndarray) -> tuple[np.ndarray, float]:
    """``H + l I`` and ``l`` (DAMPING of the mean diagonal)."""
    lam = DAMPING * max(float(np.mean(np.diag(h))), 1e-12)
    return h + lam * np.eye(h.shape[0]), lam
