"""Input statistics of compressed layers: what the data-aware passes read (NumPy only).

For the input rows ``x`` (Gemm / MatMul rows, Conv im2col patches) of a layer, per group,
sums over the calibration samples are kept, never the activations:

    n = #rows,   s = sum x,   q = sum x * x,   G = sum x x^T   (G only when d <= a size limit)

so ``E[x] = s / n``, ``E[x_j^2] = q_j / n`` (the diagonal Hessian proxy) and ``H = G / n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_dc.graph.layerview import LayerView


@dataclass
class InputStats:
    """Running sums over the input rows of one layer view; arrays are per group ``[g, d]`` / ``[g, d, d]``."""

    groups: int
    dim: int
    full: bool
    count: int = 0
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    gram: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros((self.groups, self.dim))
        self.squares = np.zeros((self.groups, self.dim))
        self.gram = np.zeros((self.groups, self.dim, self.dim)) if self.full else None

    def add(self, group: int, rows: np.ndarray) -> None:
        """Accumulate input rows ``[m, d]`` of one group (count is advanced for group 0 only)."""
        # float32 products per chunk (twice BLAS's float64 speed), summed across chunks in float64
        rows = rows.astype(np.float32, copy=False)
        self.total[group] += rows.sum(axis=0, dtype=np.float64)
        self.squares[group] += np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if self.gram is not None:
            self.gram[group] += rows.T @ rows
        if group == 0:
            self.count += rows.shape[0]

    def add_groups(self, rows: np.ndarray) -> None:
        """Accumulate input rows ``[m, g, d]`` of every group at once."""
        rows = rows.astype(np.float32, copy=False)
        self.total += rows.sum(axis=0, dtype=np.float64)
        self.squares += np.square(rows).sum(axis=0, dtype=np.float64)
        if self.gram is not None:
            by_group = np.ascontiguousarray(rows.transpose(1, 0, 2))  # [g, m, d]: one BLAS product per group
            self.gram += np.matmul(by_group.transpose(0, 2, 1), by_group)
        self.count += rows.shape[0]

    def mean(self) -> np.ndarray:
        """``E[x]``, ``[g, d]``."""
        return self.total / max(self.count, 1)

    def second_moment(self) -> np.ndarray:
        """``E[x_j^2]``, ``[g, d]``."""
        return self.squares / max(self.count, 1)

    def hessian(self) -> np.ndarray | None:
        """``E[x x^T]``, ``[g, d, d]``, or None when only the diagonal was kept."""
        return None if self.gram is None else self.gram / max(self.count, 1)

    def merge(self, other: InputStats) -> None:
        """Add another consumer's sums (same weight, same view layout)."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        if self.gram is not None and other.gram is not None:
            self.gram += other.gram
        else:
            self.gram = None


@dataclass
class WeightStats:
    """The input statistics of one compressed weight: its first view, summed over its consumers."""

    view: LayerView
    stats: InputStats
    views: tuple[LayerView, ...] = ()

    def column_moment(self) -> np.ndarray:
        """``E[x_j^2]`` of each ``W2`` element's input column, ``[out, in]``."""
        return self.stats.second_moment()[self.view.group_of_rows()]

    def element_moment(self, shape: tuple[int, ...]) -> np.ndarray:
        """``E[x_j^2]`` for each element of the stored weight (its column's input), in ``shape``."""
        out = np.zeros(int(np.prod(shape)))
        out[self.view.index.ravel()] = self.column_moment().ravel()
        return out.reshape(shape)
