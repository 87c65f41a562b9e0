"""Weight-sharing pass: 1-D k-means per layer over the kept weights.

    c_1..c_k = kmeans({W_i : mask_i}, k = class_num),   codebook = [0, c_1, ..., c_k]
    code_i = 1 + argmin_j |W_i - c_j| if mask_i else 0,    W'_i = codebook[code_i]

Code 0 is reserved for 0.0 (pruned weights, and the filler entries of the sparse form).
With ``importance`` h (e.g. E[x_j^2] of each weight's input), k-means minimises
sum_i h_i (W_i - c(W_i))^2 instead.
"""

from __future__ import annotations

import numpy as np

from onnx_dc import progress
from onnx_dc.numerics.kmeans import kmeans_1d
from onnx_dc.passes.state import CompressionState, LayerState


def share_layer(layer: LayerState, importance: np.ndarray | None = None) -> bool:
    """Cluster one layer's kept weights; returns False when the layer does not share weights.

    ``importance``: optional non-negative weight per element (the layer's shape) for k-means.
    """
    s = layer.entry.settings
    if not s.quantize_term:
        return False
    w = layer.weights.ravel()
    kept = w if layer.mask is None else w[layer.mask.ravel()]
    h = None
    if importance is not None:
        h = importance.ravel() if layer.mask is None else importance.ravel()[layer.mask.ravel()]
    result = kmeans_1d(kept, s.class_num, s.centroid_init.value, seed=s.seed, weights=h)
    codebook = np.concatenate(([0.0], result.centroids)).astype(np.float32)
    codes = np.zeros(w.size, np.uint16)
    if layer.mask is None:
        codes[:] = result.labels + 1
    else:
        codes[layer.mask.ravel()] = result.labels + 1
    layer.codebook = codebook
    layer.codes = codes.reshape(layer.weights.shape)
    layer.weights = codebook[layer.codes]
    layer.inertia = result.inertia
    return True


def share(state: CompressionState, importance: dict[str, np.ndarray] | None = None) -> int:
    """Share weights in every planned layer; returns how many layers were clustered.

    ``importance``: optional per-weight-name element weights for k-means (see :func:`share_layer`).
    """
    importance = importance or {}
    layers = progress.bar(state.layers.items(), total=len(state.layers), desc="share", unit="layer")
    return sum(share_layer(layer, importance.get(name)) for name, layer in layers)


def set_codebook(layer: LayerState, codebook: np.ndarray) -> None:
    """Replace a shared layer's codebook (after fine-tuning the centroids); entry 0 stays 0.0."""
    cb = np.asarray(codebook, dtype=np.float32).ravel().copy()
    if layer.codebook is None or cb.shape != layer.codebook.shape:
        raise ValueError(f"{layer.name}: codebook shape {cb.shape} does not match {getattr(layer.codebook, 'shape', None)}")
    cb[0] = 0.0
    layer.codebook = cb
    layer.weights = cb[layer.codes]
