"""Input statistics of compressed layers: what the data-aware passes read (NumPy only).

For the input rows ``x`` (Gemm / MatMul rows, Conv im2col patches) of a layer, per group,
sums over the calibration samples are kept, never the activations:

    n = #rows,   s = sum x,   q = sum x * x,   G = sum x x^T   (G only when d <= a size limit)

so ``E[x] = s / n``, ``E[x_j^2] = q_j / n`` (the diagonal Hessian proxy) and ``H = G / n``.

Sequential collection (the layer's input ``x`` taken from the model whose upstream layers are
already compressed, ``x_o`` the same input in the original model) adds

    s_o = sum x_o,   C = sum x x_o^T   (C only when G is kept)

so a pass can aim the compressed layer at the original layer's output, ``W_q x ~ W x_o``:
``E[x x_o^T] = C / n`` replaces ``H`` where the target's side of a product stands, and
``E[x_o] = s_o / n`` replaces ``E[x]``. Without it both fall back to ``H`` and ``E[x]``.
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
    paired: bool = False
    count: int = 0
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    gram: np.ndarray | None = field(init=False)
    total_ref: np.ndarray | None = field(init=False)
    cross: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros((self.groups, self.dim))
        self.squares = np.zeros((self.groups, self.dim))
        self.gram = np.zeros((self.groups, self.dim, self.dim)) if self.full else None
        self.total_ref = np.zeros((self.groups, self.dim)) if self.paired else None
        self.cross = np.zeros((self.groups, self.dim, self.dim)) if self.paired and self.full else None

    def add(self, group: int, rows: np.ndarray, reference: np.ndarray | None = None) -> None:
        """Accumulate input rows ``[m, d]`` of one group (count is advanced for group 0 only).

        ``reference``: the original model's rows at the same places (paired sums only).
        """
        # float32 products per chunk (twice BLAS's float64 speed), summed across chunks in float64
        rows = rows.astype(np.float32, copy=False)
        self.total[group] += rows.sum(axis=0, dtype=np.float64)
        self.squares[group] += np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if self.gram is not None:
            self.gram[group] += rows.T @ rows
        if reference is not None:
            reference = reference.astype(np.float32, copy=False)
            self.total_ref[group] += reference.sum(axis=0, dtype=np.float64)
            if self.cross is not None:
                self.cross[group] += rows.T @ reference
        if group == 0:
            self.count += rows.shape[0]

    def add_groups(self, rows: np.ndarray, reference: np.ndarray | None = None) -> None:
        """Accumulate input rows ``[m, g, d]`` of every group at once (and the original's, when paired)."""
        rows = rows.astype(np.float32, copy=False)
        self.total += rows.sum(axis=0, dtype=np.float64)
        self.squares += np.square(rows).sum(axis=0, dtype=np.float64)
        if self.gram is not None or self.cross is not None:
            by_group = np.ascontiguousarray(rows.transpose(1, 0, 2))  # [g, m, d]: one BLAS product per group
        if self.gram is not None:
            self.gram += np.matmul(by_group.transpose(0, 2, 1), by_group)
        if reference is not None:
            reference = reference.astype(np.float32, copy=False)
            self.total_ref += reference.sum(axis=0, dtype=np.float64)
            if self.cross is not None:
                self.cross += np.matmul(by_group.transpose(0, 2, 1), np.ascontiguousarray(reference.transpose(1, 0, 2)))
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

    def cross_moment(self) -> np.ndarray | None:
        """``E[x x_o^T]``, ``[g, d, d]``, of paired sums; None when not paired (or only the diagonal was kept)."""
        return None if self.cross is None else self.cross / max(self.count, 1)

    def target_cross(self) -> np.ndarray | None:
        """``E[x x_o^T]``, ``[g, d, d]``: the input against the original model's (``hessian()`` when not paired)."""
        cross = self.cross_moment()
        return self.hessian() if cross is None else cross

    def reference_mean(self) -> np.ndarray:
        """``E[x_o]``, ``[g, d]``: the original model's mean input (``mean()`` when not paired)."""
        return self.mean() if self.total_ref is None else self.total_ref / max(self.count, 1)

    def merge(self, other: InputStats) -> None:
        """Add another consumer's sums (same weight, same view layout)."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        if self.gram is not None and other.gram is not None:
            self.gram += other.gram
        else:
            self.gram = None
        if self.total_ref is not None and other.total_ref is not None:
            self.total_ref += other.total_ref
        else:
            self.total_ref = None
        if self.cross is not None and other.cross is not None:
            self.cross += other.cross
        else:
            self.cross = None


@dataclass
class WeightStats:
    """The input statistics of one compressed weight: its first view, summed over the consumers that read
    it through the same view.

    A weight read through views of different parts (a fused QKV or gate weight sliced by several
    consumers) has one :class:`WeightStats` per distinct view in ``parts``; ``view`` / ``stats`` are
    the first one's. The passes work part by part (:meth:`pieces`), each on the elements its view reads.
    """

    view: LayerView
    stats: InputStats
    views: tuple[LayerView, ...] = ()
    parts: tuple[WeightStats, ...] = ()

    def pieces(self) -> tuple[WeightStats, ...]:
        """The statistics of each distinct view (itself alone when every consumer reads the same view)."""
        return self.parts or (self,)

    def column_moment(self) -> np.ndarray:
        """``E[x_j^2]`` of each ``W2`` element's input column: ``[out, in]``, or ``[1, in]`` (it broadcasts)
        when the layer has one group, so a large layer's moments are not repeated per row."""
        moment = self.stats.second_moment()
        return moment if self.view.groups == 1 else moment[self.view.group_of_rows()]

    def element_moment(self, shape: tuple[int, ...]) -> np.ndarray:
        """``E[x_j^2]`` for each element of the stored weight (its column's input), in ``shape``."""
        out = np.zeros(int(np.prod(shape)))
        for piece in self.pieces():
            out[piece.view.index] = piece.column_moment()  # broadcast over rows, no [out, in] copy
        return out.reshape(shape)
