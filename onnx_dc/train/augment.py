"""Training-time augmentation of image inputs: random translation.

Each sample of a batch moves by ``(dy, dx)``, drawn uniformly from ``[-s, s]`` per sample,
with zeros shifted in (MNIST's background after scaling; the usual pad-and-crop):

    out[n, ..., i, j] = x[n, ..., i - dy_n, j - dx_n]   where the source is inside the image, else 0

It is drawn from the stage's seeded generator, so a schedule stays deterministic. Only the
training batches move; evaluation and the stored model never see it.
"""

from __future__ import annotations

import numpy as np


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator, channels_last: bool = False) -> np.ndarray:
    """A copy of the image batch ``x`` (rank 4, NCHW or NHWC) with each sample moved by up to ``max_shift`` pixels."""
    if max_shift <= 0:
        return x
    s = max_shift
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    dy = rng.integers(-s, s + 1, n)
    dx = rng.integers(-s, s + 1, n)
    out = np.empty_like(x)
    for k in range(n):  # one slice per sample: a batch is tens of images
        out[k] = padded[k, :, s - dy[k]: s - dy[k] + h, s - dx[k]: s - dx[k] + w]
    return out.transpose(0, 2, 3, 1) if channels_last else out
