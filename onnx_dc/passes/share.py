"""Weight-sharing pass: 1-D k-means per layer over the kept weights.

    c_1..c_k = kmeans({W_i : mask_i}, k = class_num)
    pruned layer:   codebook = [0, c_1, ..., c_k],  code_i = 1 + argmin_j |W_i - c_j| if mask_i else 0
    unpruned layer: codebook = [c_1, ..., c_k],     code_i = argmin_j |W_i - c_j|
    W'_i = codebook[code_i]

Code 0 is reserved for 0.0 (pruned weights, and the filler entries of the sparse form) only
in layers that are pruned, so that class_num 256 without pruning takes 8-bit codes.
With ``importance`` h (e.g. E[x_j^2] of each weight's input), k-means minimises
sum_i h_i (W_i - c(W_i))^2 instead.

With ``codebook: channel`` each output channel r (along the site's channel axis) has a scale
s_r, the root mean square of its kept weights rounded to float16 (1 where that is 0 or not
finite), and the codebook is shared by the channels' normalised weights:

    c_1..c_k = kmeans({W_i / s_r(i)}, weights h_i s_r(i)^2),    W'_i = s_r(i) codebook[code_i]

which is the same weighted error sum_i h_i (W_i - W'_i)^2, so a channel of small weights gets
codebook values its own size instead of the few near zero a layer codebook spends on it.

With ``codebook: group`` (``group:G``) each group of G output channels clusters its own kept weights
into class_num values; the layer's codebook is the groups' codebooks one after another (a group
with fewer distinct weights repeats its last value, an all-pruned group holds zeros), and a
weight's code indexes it globally (:class:`~onnx_dc.passes.state.LayerState`), so every pass that
reads ``codebook[codes]`` reads the right group's value.
"""

from __future__ import annotations

import numpy as np

from onnx_dc import progress
from onnx_dc.config import Codebook
from onnx_dc.numerics.kmeans import kmeans_1d
from onnx_dc.passes.state import CompressionState, LayerState


def share_layer(layer: LayerState, importance: np.ndarray | None = None) -> bool:
    """Cluster one layer's kept weights; returns False when the layer does not share weights.

    ``importance``: optional non-negative weight per element (the layer's shape) for k-means.
    """
    s = layer.entry.settings
    if not s.quantize_term:
        return False
    layer.scale = None
    layer.group_rows = 0
    if s.codebook == Codebook.GROUP and layer.weights.ndim >= 1:
        _share_groups(layer, importance)
        return True
    w = layer.weights.ravel()
    keep = None if layer.mask is None else layer.mask.ravel()
    kept = w if keep is None else w[keep]
    h = None
    if importance is not None:
        h = importance.ravel() if keep is None else importance.ravel()[keep]
    if s.codebook == Codebook.CHANNEL and layer.weights.ndim >= 1:
        # the kept weights over their channel's scale, weighted by h s^2 (module docstring); weight-sized
        # temporaries only for an unpruned layer
        layer.scale_axis = min(layer.entry.site.channel_axis, layer.weights.ndim - 1)
        layer.scale = channel_scales(layer.weights, layer.mask, layer.scale_axis)
        if keep is None:
            per_element = np.broadcast_to(layer.scale.reshape(layer.scale_shape()), layer.weights.shape).ravel()
        else:
            per_element = layer.scale_at(np.flatnonzero(keep))
        kept = kept / per_element
        squared = per_element * per_element
        h = squared if h is None else h * squared
        del per_element, squared
    result = kmeans_1d(kept, s.class_num, s.centroid_init.value, seed=s.seed, weights=h)
    centroids, labels, inertia = result.centroids, result.labels, result.inertia
    if layer.mask is None:
        codebook = np.asarray(centroids, np.float32)
        codes = labels.astype(_code_dtype(codebook.size))
    else:
        codebook = np.concatenate(([0.0], centroids)).astype(np.float32)
        codes = np.zeros(w.size, _code_dtype(codebook.size))
        codes[layer.mask.ravel()] = labels + 1
    shape = layer.weights.shape
    del w, kept
    layer.weights = None  # freed before its shared values are built: one float copy of the layer at a time
    layer.codebook = codebook
    layer.codes = codes.reshape(shape)
    layer.weights = layer.shared_values()
    layer.inertia = inertia
    return True


def _share_groups(layer: LayerState, importance: np.ndarray | None) -> None:
    """k-means per group of ``group_rows`` output channels, class_num values each (module docstring).

    Each group's weights are taken from a view with the channel axis first, so only one group's values are
    copied at a time (no weight-sized index array, whatever the axis).
    """
    s = layer.entry.settings
    k, z = s.class_num, int(layer.reserves_zero)
    layer.scale_axis = min(layer.entry.site.channel_axis, layer.weights.ndim - 1)
    layer.group_rows = s.group_rows
    channels = layer.weights.shape[layer.scale_axis]
    groups = -(-channels // s.group_rows)
    centroids = np.zeros((groups, k))
    codes = np.zeros(layer.weights.shape, _code_dtype(z + groups * k))
    if importance is not None:
        importance = importance.reshape(layer.weights.shape)
    weights, keep, h, out = (None if a is None else np.moveaxis(a, layer.scale_axis, 0)
                             for a in (layer.weights, layer.mask, importance, codes))
    inertia = 0.0
    for g in range(groups):
        rows = slice(g * s.group_rows, (g + 1) * s.group_rows)
        values = _kept_rows(weights, keep, rows)
        if values.size == 0:
            continue  # an all-pruned group: its values stay 0.0 and no weight reads them
        result = kmeans_1d(values, k, s.centroid_init.value, seed=s.seed,
                           weights=None if h is None else _kept_rows(h, keep, rows))
        found = np.asarray(result.centroids, np.float64)
        centroids[g, :found.size] = found
        centroids[g, found.size:] = found[-1]  # fewer distinct weights than k: unused repeats
        labels = (z + g * k + result.labels).astype(codes.dtype)
        if keep is None:
            out[rows] = labels.reshape(out[rows].shape)
        else:
            out[rows][keep[rows]] = labels
        inertia += result.inertia
    codebook = np.concatenate(([0.0] * z, centroids.ravel())).astype(np.float32)
    layer.weights = None  # freed before its shared values are built: one float copy of the layer at a time
    layer.codebook = codebook
    layer.codes = codes
    layer.weights = layer.shared_values()
    layer.inertia = inertia


def _kept_rows(a: np.ndarray, keep: np.ndarray | None, rows: slice) -> np.ndarray:
    """The kept elements of channels ``rows`` of ``a`` (channel axis first), in flat order of the view."""
    return a[rows].ravel() if keep is None else a[rows][keep[rows]]


def channel_scales(weights: np.ndarray, mask: np.ndarray | None, axis: int) -> np.ndarray:
    """float32 ``[C]``: the RMS of each channel's kept weights along ``axis``, float16-exact; 1.0 where it is 0 or
    not finite in float16 (an all-pruned channel, or weights below float16's range)."""
    rows = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
    keep = None if mask is None else np.moveaxis(mask, axis, 0).reshape(rows.shape)
    sums = np.zeros(rows.shape[0])
    step = max(1, (1 << 22) // max(rows.shape[1], 1))  # rows at a time: float64 temporaries stay small
    for lo in range(0, rows.shape[0], step):
        part = rows[lo:lo + step].astype(np.float64)
        if keep is not None:
            part *= keep[lo:lo + step]
        sums[lo:lo + step] = np.einsum("ij,ij->i", part, part)
    count = np.full(rows.shape[0], rows.shape[1]) if keep is None else keep.sum(axis=1)
    mean_sq = sums / np.maximum(count, 1)
    half = np.sqrt(mean_sq).astype(np.float16).astype(np.float32)
    return np.where((half > 0) & np.isfinite(half), half, np.float32(1.0)).astype(np.float32)


def _code_dtype(entries: int) -> type:
    """The narrowest codes for a codebook of ``entries`` values: uint8 when it allows, half the memory of the
    largest per-weight array."""
    return np.uint8 if entries <= 256 else np.uint16 if entries <= 65536 else np.uint32


def share(state: CompressionState, importance: dict[str, np.ndarray] | None = None) -> int:
    """Share weights in every planned layer; returns how many layers were clustered.

    ``importance``: optional per-weight-name element weights for k-means (see :func:`share_layer`).
    """
    importance = importance or {}
    layers = progress.bar(state.layers.items(), total=len(state.layers), desc="share", unit="layer")
    return sum(share_layer(layer, importance.get(name)) for name, layer in layers)


def set_codebook(layer: LayerState, codebook: np.ndarray) -> None:
    """Replace a shared layer's codebook (after fine-tuning the centroids); a pruned layer's entry 0 stays 0.0."""
    cb = np.asarray(codebook, dtype=np.float32).ravel().copy()
    if layer.codebook is None or cb.shape != layer.codebook.shape:
        raise ValueError(f"{layer.name}: codebook shape {cb.shape} does not match {getattr(layer.codebook, 'shape', None)}")
    if layer.reserves_zero:
        cb[0] = 0.0
    layer.codebook = cb
    layer.weights = layer.shared_values()
