"""The working state of a compression run: the model plus, per planned weight, its arrays.

Passes read and update :class:`LayerState` objects; the model's initializers are only
rewritten by :func:`CompressionState.dense_model` (the model with current weights, for
evaluation and fine-tuning) and by the lowering pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dc.graph import external, layout
from onnx_dc.plan import Plan, PlanEntry


@dataclass
class LayerState:
    """Arrays of one weight as the passes go.

    Attributes:
        weights: float32 current values (pruned and/or shared), original shape.
        mask: bool keep-mask, or None when nothing was pruned.
        threshold: magnitude threshold used by pruning (-1.0 when none).
        codebook: float32 ``[k + 1]`` with ``codebook[0] == 0`` when pruned, else ``[k]``; None before sharing.
        codes: uint8 (codebook of <= 256 entries) or uint16 per element (0 for pruned weights), or None
            before sharing.
        scale: ``codebook: channel``: float32 ``[C]``, one float16-exact scale per output channel along
            :attr:`scale_axis` (``W = scale * codebook[codes]``), or None (one codebook for the layer).
        scale_axis: the output-channel axis of :attr:`scale` and of the row groups.
        group_rows: ``codebook: group``: output channels per codebook (0: one codebook for the layer). The
            codebook then holds the groups' codebooks one after another, ``k`` values each, after a pruned
            layer's reserved zero: channel ``r``'s weights take codes ``z + (r div group_rows) k + j``
            (``z`` = 1 when pruned, else 0), so ``W = codebook[codes]`` still holds.
    """

    entry: PlanEntry
    weights: np.ndarray
    mask: np.ndarray | None = None
    threshold: float = -1.0
    codebook: np.ndarray | None = None
    codes: np.ndarray | None = None
    inertia: float | None = None
    scale: np.ndarray | None = None
    scale_axis: int = 0
    group_rows: int = 0

    @property
    def name(self) -> str:
        """Initializer name of the weight."""
        return self.entry.site.name

    @property
    def label(self) -> str:
        """The layer's name in messages: its node's, with the weight's in brackets (``layer_name``)."""
        return self.entry.site.label

    @property
    def reserves_zero(self) -> bool:
        """Whether code 0 is the reserved 0.0 of pruned weights (only pruned layers reserve it)."""
        return self.mask is not None

    def scale_shape(self) -> tuple[int, ...]:
        """The shape :attr:`scale` is stored in: the weight's rank, 1 on every axis but :attr:`scale_axis`."""
        full = (self.codes if self.codes is not None else self.weights).shape
        shape = [1] * len(full)
        shape[self.scale_axis] = full[self.scale_axis]
        return tuple(shape)

    def channel_of(self, flat_index: np.ndarray) -> np.ndarray:
        """The channel (index along :attr:`scale_axis`) of each weight at ``flat_index`` (positions in the flat weight)."""
        full = (self.codes if self.codes is not None else self.weights).shape
        stride = int(np.prod(full[self.scale_axis + 1:], dtype=np.int64))
        return (np.asarray(flat_index) // stride) % full[self.scale_axis]

    def scale_at(self, flat_index: np.ndarray) -> np.ndarray:
        """The scale of each weight at ``flat_index`` (positions in the flat weight); 1.0 without a scale."""
        if self.scale is None:
            return np.ones(np.shape(flat_index), np.float32)
        return self.scale[self.channel_of(flat_index)]

    def groups(self) -> int:
        """Number of codebooks of a grouped layer (``ceil(C / group_rows)``); 1 without groups."""
        if not self.group_rows:
            return 1
        full = (self.codes if self.codes is not None else self.weights).shape
        return -(-full[self.scale_axis] // self.group_rows)

    def group_size(self) -> int:
        """Values per codebook (``k``): the codebook's entries after the reserved zero, over :meth:`groups`."""
        return (self.codebook.size - int(self.reserves_zero)) // self.groups()

    def group_of(self, flat_index: np.ndarray) -> np.ndarray:
        """The codebook group of each weight at ``flat_index`` (all 0 without groups)."""
        if not self.group_rows:
            return np.zeros(np.shape(flat_index), np.int64)
        return self.channel_of(flat_index) // self.group_rows

    def group_layout(self) -> tuple[int, int, int, int]:
        """``(group_rows, group_size, stride, channels)`` of a grouped layer: what its decoder node records."""
        full = self.codes.shape
        stride = int(np.prod(full[self.scale_axis + 1:], dtype=np.int64))
        return self.group_rows, self.group_size(), stride, int(full[self.scale_axis])

    def stored_codes(self) -> np.ndarray:
        """The codes in flat order as the file stores them: a grouped layer's within their group's codebook."""
        if not self.group_rows:
            return self.codes.ravel()
        return layout.shift_codes(self.codes, self.group_layout(), self.reserves_zero, -1)

    def shared_values(self, codebook: np.ndarray | None = None) -> np.ndarray:
        """The weights the codes stand for: ``codebook[codes]``, times the channel scales when there are some."""
        cb = self.codebook if codebook is None else codebook
        values = cb[self.codes]
        if self.scale is not None:
            values *= self.scale.reshape(self.scale_shape())
        return values

    def kept(self) -> int:
        """Number of weights not pruned."""
        return int(self.mask.sum()) if self.mask is not None else int(self.weights.size)

    def copy(self) -> LayerState:
        """A new state of this layer holding every field's present value.

        The arrays are shared, not copied: the passes and fine-tuning give a layer new arrays
        and never write into the ones it holds, so a copy keeps the values it was taken with,
        and a snapshot of a large model costs no second copy of its weights.
        """
        return dataclasses.replace(self)

    def assign(self, other: LayerState) -> None:
        """Take every field of ``other`` (its arrays themselves, as :meth:`copy` shares them)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(other, f.name))


@dataclass
class CompressionState:
    """A normalized model, its plan, and one :class:`LayerState` per planned weight."""

    model: onnx.ModelProto
    plan: Plan
    layers: dict[str, LayerState] = field(default_factory=dict)
    source_bytes: int | None = None
    originals_kept: bool = False  # whether model holds the original weights (see keep_originals)

    @classmethod
    def start(cls, model: onnx.ModelProto, plan: Plan, source_bytes: int | None = None) -> CompressionState:
        """Take each planned weight out of ``model`` as a float32 array.

        The weight's bytes then live in the state only: the initializer in ``model`` keeps its
        name, type and shape but no data (so a model's weights are held once, not twice).
        :meth:`dense_model` and the lowering pass write them back.
        """
        inits = {t.name: t for t in model.graph.initializer}
        layers = {}
        for e in plan.entries:
            tensor = inits[e.site.name]
            # a copy-on-write map of the file: no copy, and pages are read when a pass reaches the layer
            weights = np.asarray(external.to_array(tensor, writable=True), dtype=np.float32)
            layers[e.site.name] = LayerState(e, weights if weights.flags.writeable else weights.copy())
            _drop_data(tensor)
        return cls(model, plan, layers, source_bytes)

    def dense_model(self) -> onnx.ModelProto:
        """A copy of the model whose planned initializers hold the current weights."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        for init in out.graph.initializer:
            layer = self.layers.get(init.name)
            if layer is not None:
                init.CopyFrom(numpy_helper.from_array(layer.weights, init.name))
        external.embed_all(out)  # a session or a training graph needs every byte in the proto
        return out

    def keep_originals(self) -> None:
        """Put the original weights back into :attr:`model`, for passes that compare with them.

        The data-aware passes run the original model and measure against its weights; they
        call this before any pass has changed a weight (it refuses afterwards, since the
        originals are gone by then). Costs one more copy of the planned weights.
        """
        if self.originals_kept:
            return
        if any(layer.mask is not None or layer.codebook is not None for layer in self.layers.values()):
            raise RuntimeError("keep_originals() must run before any pass changes a weight")
        self.model = self.dense_model()
        self.originals_kept = True

    def set_weights(self, name: str, values: np.ndarray) -> None:
        """Replace a weight's values (after fine-tuning), keeping pruned positions at zero."""
        layer = self.layers[name]
        values = np.asarray(values, dtype=np.float32).reshape(layer.weights.shape)
        if layer.mask is not None:
            values = values * layer.mask
        layer.weights = values


def _drop_data(tensor: onnx.TensorProto) -> None:
    for name in ("raw_data", "float_data", "double_data", "int32_data", "external_data"):
        tensor.ClearField(name)
    tensor.data_location = onnx.TensorProto.DEFAULT
