"""Bias correction: move each layer's bias by the mean output error its compression causes.

For ``y = W2 x + b`` compressed to ``W_q``, on the calibration inputs

    E[y - y_q] = (W2 - W_q) E[x]   so   b' = b + (alpha / beta) (W2 - W_q) E[x]

(``alpha / beta`` is Gemm's scaling; 1 elsewhere; Conv uses the mean im2col patch of each
group; a GRU / LSTM / RNN weight moves its half of ``B``: ``Wb`` for ``W``, ``Rb`` for ``R``).
The compressed layer's mean output then equals the original's on those inputs. With
sequential statistics (input ``x`` from the model whose upstream layers are compressed,
``x_o`` the original's) the shift is ``W2 E[x_o] - W_q E[x]``: it also takes out the mean
error that reaches the layer from upstream.
Layers without a bias (a Conv / ConvTranspose / Gemm bias input, a recurrent ``B``, or a
following Add of a per-channel initializer), and weights read by several nodes, are left as
they are.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.passes.stats import WeightStats

_CHUNK = 1 << 22  # elements of a block of rows (float64 copies of W2 and W_q)


def bias_shift(layer: LayerState, original: np.ndarray, stats: WeightStats) -> np.ndarray:
    """``W2 E[x_o] - W_q E[x]`` per output row, ``[out]`` (``(W2 - W_q) E[x]`` when not sequential).

    Computed a block of rows at a time, so a large layer's ``W2`` is never held in float64.
    """
    index = stats.view.index
    groups = stats.view.group_of_rows()
    mean, mean_ref = stats.stats.mean(), stats.stats.reference_mean()
    flat_w, flat_q = original.ravel(), layer.weights.ravel()
    out = np.empty(index.shape[0])
    step = max(1, _CHUNK // max(1, index.shape[1]))
    for s in range(0, index.shape[0], step):
        rows = index[s : s + step]
        g = groups[s : s + step]
        w2, wq2 = flat_w[rows].astype(np.float64), flat_q[rows].astype(np.float64)
        out[s : s + step] = np.einsum("ij,ij->i", w2, mean_ref[g]) - np.einsum("ij,ij->i", wq2, mean[g])
    return out


def movable_bias(stats: WeightStats) -> bool:
    """Whether the layer has one bias the correction can move (not a weight read through several views)."""
    return stats.view.bias is not None and len(stats.views) <= 1


def correct_bias(state: CompressionState, name: str, original: np.ndarray, stats: WeightStats) -> np.ndarray | None:
    """Apply the correction to the bias initializer in ``state.model``; returns the bias before, or None."""
    view = stats.view
    if not movable_bias(stats):
        return None
    init = next((t for t in state.model.graph.initializer if t.name == view.bias), None)
    if init is None:
        return None
    before = numpy_helper.to_array(init).copy()
    shift = view.bias_scale * bias_shift(state.layers[name], original, stats)
    after = before.astype(np.float64).ravel()
    after[view.bias_index()] += shift
    init.CopyFrom(numpy_helper.from_array(after.reshape(before.shape).astype(before.dtype), view.bias))
    return before


def residual_error(weights: np.ndarray, original: np.ndarray, stats: WeightStats, corrected: bool = True) -> float:
    """The summed squared output error of a layer holding ``weights`` instead of ``original`` on the statistics'
    samples, per input row, left after bias correction: ``sum_i d_i^T (E[x x^T] - E[x] E[x]^T) d_i`` with
    ``d_i = w_i - wq_i`` (``corrected=False``, or a layer whose bias cannot move: ``E[x x^T]`` alone). Where only
    the diagonal of ``E[x x^T]`` was kept, ``E[x_j^2]`` stands for it. Statistics of the original model
    (no sequential cross moment): what a layer compressed alone does to its own output."""
    flat_w, flat_q = original.ravel(), weights.ravel()
    centre = corrected and movable_bias(stats)
    total = 0.0
    for p in stats.pieces():
        index, groups = p.view.index, p.view.group_of_rows()
        hessian, mean, moment = p.stats.hessian(), p.stats.mean(), p.stats.second_moment()
        step = max(1, _CHUNK // max(1, index.shape[1]))
        for s in range(0, index.shape[0], step):
            rows, g = index[s : s + step], groups[s : s + step]
            d = flat_w[rows].astype(np.float64) - flat_q[rows].astype(np.float64)
            if hessian is None:
                total += float(np.einsum("ij,ij->", d * d, moment[g]))
            else:
                for k in np.unique(g):
                    dk = d[g == k]
                    total += float(np.sum((dk @ hessian[k]) * dk))
            if centre:
                total -= float(np.sum(np.einsum("ij,ij->i", d, mean[g]) ** 2))
    return max(total, 0.0)
