"""Bias correction: move each layer's bias by the mean output error its compression causes.

For ``y = W2 x + b`` compressed to ``W_q``, on the calibration inputs

    E[y - y_q] = (W2 - W_q) E[x]   so   b' = b + (alpha / beta) (W2 - W_q) E[x]

(``alpha / beta`` is Gemm's scaling; 1 elsewhere; Conv uses the mean im2col patch of each
group). The compressed layer's mean output then equals the original's on those inputs.
With sequential statistics (input ``x`` from the model whose upstream layers are
compressed, ``x_o`` the original's) the shift is ``W2 E[x_o] - W_q E[x]``: it also takes
out the mean error that reaches the layer from upstream.
Layers without a bias (a Conv / Gemm bias input or a following Add of a per-channel
initializer), and weights read by several nodes, are left as they are.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.passes.stats import WeightStats


def bias_shift(layer: LayerState, original: np.ndarray, stats: WeightStats) -> np.ndarray:
    """``W2 E[x_o] - W_q E[x]`` per output row, ``[out]`` (``(W2 - W_q) E[x]`` when not sequential)."""
    index = stats.view.index
    rows = stats.view.group_of_rows()
    w2 = original.ravel()[index].astype(np.float64)
    wq2 = layer.weights.ravel()[index].astype(np.float64)
    mean, mean_ref = stats.stats.mean()[rows], stats.stats.reference_mean()[rows]
    return np.einsum("ij,ij->i", w2, mean_ref) - np.einsum("ij,ij->i", wq2, mean)


def correct_bias(state: CompressionState, name: str, original: np.ndarray, stats: WeightStats) -> np.ndarray | None:
    """Apply the correction to the bias initializer in ``state.model``; returns the bias before, or None."""
    view = stats.view
    if view.bias is None or len(stats.views) > 1:
        return None
    init = next((t for t in state.model.graph.initializer if t.name == view.bias), None)
    if init is None:
        return None
    before = numpy_helper.to_array(init).copy()
    shift = view.bias_scale * bias_shift(state.layers[name], original, stats)
    after = (before.astype(np.float64) + shift.reshape(before.shape)).astype(before.dtype)
    init.CopyFrom(numpy_helper.from_array(after, view.bias))
    return before
