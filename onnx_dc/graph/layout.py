"""The ``*.dc.onnx`` layout in one place: decoder op names, their inputs and attributes, metadata keys.

Writers (the lowering pass) build decoder nodes with :func:`make_decoder_node`; readers (the
report, the fine-tuning restore, the ``.dcz`` packer, ``export-dense``) read them back with
:func:`read_decoder` and decode them with :func:`decode`. docs/DCONNX.md describes the same
layout in prose. A decoder node computes

    DecodeDense:        W = reshape(codebook[codes], shape)
    DecodeSparse:       pos = cumsum(gaps + 1) - 1;  W.flat[pos] = codebook[codes], 0 elsewhere
    DecodeSparseValues: pos as above;                W.flat[pos] = values, 0 elsewhere

with ``codes`` and ``gaps`` bit-packed at ``code_bits`` / ``index_bits``. A shared weight with channel
scales (``codebook: channel``) has a fourth input ``scale``, float16 in the weight's rank with 1 on every
axis but the channel axis, and its op name ends in ``_s``: ``W = decoded * float32(scale)`` (broadcast;
the sparse kind scales the kept values before the scatter, reading the channel of position ``p`` as
``(p div scale_stride) mod C``, ``scale_stride`` a node attribute).
Files holding such a decoder say format :data:`SCALED_FORMAT_VERSION`. A shared weight with one codebook
per group of output channels (``codebook: group:G``) has an op name ending in ``_r``; its codebook holds
the groups' codebooks one after another (``group_size`` values each, after a pruned layer's reserved
zero) and a stored code ``q`` of position ``p`` reads entry ``q + group_size * ((p div group_stride) mod
channels) div group_rows`` (``q`` = 0, the reserved zero, stays 0). Files holding one say format
:data:`GROUPED_FORMAT_VERSION`. A weight of at most
:data:`GENERIC_MAX_NUMEL` elements calls the one generic function of its kind
(``DecodeSparse_g``), which reads the widths from the node's attributes; a larger one names
the kind and the widths (``DecodeSparse_c5_i5``), so that each width gets a decoder function
specialised to it (onnx_dc/graph/decoders.py). Files of format 1 used the bare kind name
(``DecodeSparse``); they, and files whose small weights use specialised names, are still read.
Settings attributes equal to :data:`ABSENT` are not written: absent means that value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.config import BiasType, CentroidInit, Codebook, Form, Settings
from onnx_dc.graph import biases
from onnx_dc.numerics.bitpack import unpack_bits
from onnx_dc.numerics.sparse import decode_positions

DOMAIN = "onnx_dc"
DOMAIN_VERSION = 1
FORMAT_VERSION = "3"
SCALED_FORMAT_VERSION = "4"  # format 3 plus decoders with channel scales (``_s``)
GROUPED_FORMAT_VERSION = "5"  # format 4 plus decoders with a codebook per group of channels (``_r``)

DENSE = "DecodeDense"
SPARSE = "DecodeSparse"
SPARSE_VALUES = "DecodeSparseValues"
KINDS = (DENSE, SPARSE, SPARSE_VALUES)
INPUTS = {DENSE: ("codebook", "codes"), SPARSE: ("codebook", "codes", "gaps"), SPARSE_VALUES: ("values", "gaps")}
FORM_NAMES = {DENSE: "dense", SPARSE: "sparse", SPARSE_VALUES: "sparse-f32"}
CODES, GAPS = "codes", "gaps"
SCALE = "scale"
SCALED = "s"  # the op-name part of a decoder with channel scales
GROUPED = "r"  # the op-name part of a decoder with a codebook per group of rows (output channels)
GROUP_ATTRIBUTES = ("group_rows", "group_size", "group_stride", "channels")

# Every attribute a decoder node carries (the functions declare them all).
ATTRIBUTES = ("code_bits", "index_bits", "count", "numel", "shape", "sparse_ratio", "prune_quality", "class_num",
              "quantize_term", "centroid_init", "form", "fixed_index_bits", "seed", "reserves_zero", "bias",
              "codebook", "scale_stride") + GROUP_ATTRIBUTES

# Value of a settings attribute when the node does not carry it (old files carry them all).
ABSENT = {"sparse_ratio": -1.0, "prune_quality": -1.0, "class_num": Settings.class_num, "quantize_term": 1,
          "centroid_init": CentroidInit.LINEAR.value, "form": Form.AUTO.value, "fixed_index_bits": 0, "seed": 0,
          "reserves_zero": 1, "bias": BiasType.FLOAT32.value, "codebook": Codebook.LAYER.value,
          "group_rows": 0, "group_size": 0, "group_stride": 1, "channels": 1}
# Weights of at most this many elements use the generic decoder functions (one per kind, widths read from
# the node). Folding a generic body holds a uint8 bit vector and an int32 [count, width] matrix besides the
# weight. Measured (scripts/bench_small_files.py, onnxruntime 1.19, one sparse weight, 10% kept): no peak
# RSS difference to the width-specialised body at 2**20 elements, +30 MB at 2**22 (a 16 MB weight); larger
# weights keep the specialised bodies, whose intermediates stay narrow (VGG-16: scripts/bench_scale.py).
GENERIC_MAX_NUMEL = 1 << 20
GENERIC = "g"

META_VERSION = "onnx_dc.version"
META_SKIPPED = "onnx_dc.skipped"
META_SOURCE_BYTES = "onnx_dc.source_bytes"
META_SOURCE_WEIGHT_BYTES = "onnx_dc.source_weight_bytes"
META_NOTES = "onnx_dc.notes"  # whole-model remarks (an already-quantized model), a JSON list


def op_type(kind: str, code_bits: int, index_bits: int, generic: bool = False, scaled: bool = False,
            grouped: bool = False) -> str:
    """The op (and function) name of a decoder of ``kind`` at these widths, or of its generic function;
    ``scaled``: with channel scales (a ``_s`` suffix); ``grouped``: a codebook per group of rows (``_r``)."""
    parts = [kind]
    if generic:
        parts.append(GENERIC)
    else:
        if kind != SPARSE_VALUES:
            parts.append(f"c{code_bits}")
        if kind != DENSE:
            parts.append(f"i{index_bits}")
    if scaled:
        parts.append(SCALED)
    if grouped:
        parts.append(GROUPED)
    return "_".join(parts)


def scaled(op: str) -> bool:
    """Whether a decoder op name says it multiplies by channel scales."""
    return SCALED in op.split("_")[1:]


def grouped(op: str) -> bool:
    """Whether a decoder op name says its codebook is one per group of rows."""
    return GROUPED in op.split("_")[1:]


def format_version(op_types: set[str] | list[str]) -> str:
    """The format a file with decoders of these op types says it is."""
    if any(grouped(op) for op in op_types):
        return GROUPED_FORMAT_VERSION
    return SCALED_FORMAT_VERSION if any(scaled(op) for op in op_types) else FORMAT_VERSION


def inputs_of(kind: str, with_scale: bool) -> tuple[str, ...]:
    """The input roles of a decoder of ``kind``, in order."""
    return INPUTS[kind] + ((SCALE,) if with_scale else ())


def kind_of(node: onnx.NodeProto) -> str | None:
    """The decoder kind of a node (format 1 and 2 names), or None when it is not a decoder."""
    if node.domain != DOMAIN or not node.output:
        return None
    kind = node.op_type.split("_", 1)[0]
    return kind if kind in KINDS else None


def decoder_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The decoder nodes of a graph, in order."""
    return [n for n in graph.node if kind_of(n) is not None]


@dataclass(frozen=True)
class Decoder:
    """One decoder node read back: where its tensors are, its widths, and the settings it was made with.

    Attributes:
        kind: DENSE, SPARSE or SPARSE_VALUES.
        weight: the weight it rebuilds (the node's output).
        inputs: role ("codebook", "codes", "gaps", "values") -> initializer name.
        code_bits, index_bits: stored widths (0 when the stream does not exist).
        count: stored entries (codes, gaps, values); numel, shape: of the weight.
        settings: the compression settings, every field (form, fixed index bits, seed included).
        reserves_zero: whether code 0 means a pruned weight (codebook entry 0 is 0.0).
        scaled: whether the node multiplies by channel scales (its ``scale`` input).
        groups: a grouped codebook's ``(group_rows, group_size, group_stride, channels)``, or None.
    """

    kind: str
    weight: str
    inputs: dict[str, str]
    code_bits: int
    index_bits: int
    count: int
    numel: int
    shape: tuple[int, ...]
    settings: Settings
    reserves_zero: bool
    scaled: bool = False
    groups: tuple[int, int, int, int] | None = None


def make_decoder_node(weight: str, kind: str, code_bits: int, index_bits: int, count: int, shape: tuple[int, ...],
                      settings: Settings, shared: bool, reserves_zero: bool,
                      generic: bool | None = None, with_scale: bool = False, scale_axis: int = 0,
                      groups: tuple[int, int] | None = None) -> onnx.NodeProto:
    """The decoder node rebuilding ``weight`` from initializers ``weight/dc/<role>`` (``with_scale``: and
    ``weight/dc/scale``, channel scales along ``scale_axis``; ``groups``: ``(group_rows, group_size)`` of a
    codebook per group of channels along ``scale_axis``).

    ``generic`` (default: whether the weight has at most :data:`GENERIC_MAX_NUMEL` elements)
    picks the generic decoder function of the kind over the one specialised to the widths.
    """
    s = settings
    numel = int(np.prod(shape, dtype=np.int64))
    if generic is None:
        generic = numel <= GENERIC_MAX_NUMEL
    attrs = dict(
        sparse_ratio=float(s.sparse_ratio) if s.prune_quality is None and s.prunes else -1.0,
        prune_quality=float(s.prune_quality) if s.prune_quality is not None else -1.0,
        class_num=int(s.class_num), quantize_term=int(shared), centroid_init=s.centroid_init.value,
        form=s.form.value, fixed_index_bits=int(s.index_bits or 0), seed=int(s.seed), reserves_zero=int(reserves_zero),
        bias=s.bias.value, codebook=s.codebook.value,
        group_rows=int(s.group_rows) if s.codebook == Codebook.GROUP else 0,
    )
    extra = {}
    stride = int(np.prod(shape[scale_axis + 1:], dtype=np.int64))  # elements per step along the channel axis
    if with_scale:  # the sparse kind's channel of a flat position
        extra["scale_stride"] = stride
    if groups is not None:
        extra.update(group_size=int(groups[1]), group_stride=stride,
                     channels=int(shape[scale_axis]))
    if groups is not None:  # the grouped functions read reserves_zero: always written
        extra["reserves_zero"] = int(reserves_zero)
    written = {**{k: v for k, v in attrs.items() if v != ABSENT[k]}, **extra}
    return oh.make_node(
        op_type(kind, code_bits, index_bits, generic, with_scale, groups is not None),
        [f"{weight}/dc/{x}" for x in inputs_of(kind, with_scale)], [weight],
        name=f"{weight}/dc/decode", domain=DOMAIN,
        code_bits=code_bits, index_bits=index_bits, count=count, numel=numel, shape=[int(d) for d in shape],
        **written,
    )


def read_decoder(node: onnx.NodeProto) -> Decoder:
    """Read a decoder node (see :func:`kind_of`) back into a :class:`Decoder`."""
    kind = kind_of(node)
    attrs = {**ABSENT, **{a.name: oh.get_attribute_value(a) for a in node.attribute}}
    shape = tuple(int(d) for d in attrs.get("shape", ()))
    # Format 1 files have no reserves_zero: there code 0 was always the reserved zero (ABSENT).
    reserves = bool(int(attrs["reserves_zero"]))
    with_scale = scaled(node.op_type)
    groups = tuple(int(attrs[a]) for a in GROUP_ATTRIBUTES) if grouped(node.op_type) else None
    return Decoder(
        kind=kind, weight=node.output[0], inputs=dict(zip(inputs_of(kind, with_scale), node.input)),
        code_bits=int(attrs.get("code_bits", 0)), index_bits=int(attrs.get("index_bits", 0)),
        count=int(attrs.get("count", 0)), numel=int(attrs.get("numel", 0)), shape=shape,
        settings=_settings(attrs), reserves_zero=reserves, scaled=with_scale, groups=groups,
    )


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _decimal(value: float) -> float:
    """A float attribute (stored as float32) back as the shortest decimal that rounds to it: 0.8, not 0.800000011."""
    return float(str(np.float32(value)))


def _settings(attrs: dict) -> Settings:
    ratio = _decimal(attrs["sparse_ratio"])
    quality = _decimal(attrs["prune_quality"])
    class_num = int(attrs["class_num"])
    init = _text(attrs["centroid_init"], CentroidInit.LINEAR.value)
    form = _text(attrs["form"], Form.AUTO.value)
    fixed = int(attrs["fixed_index_bits"])
    bias = _text(attrs["bias"], BiasType.FLOAT32.value)
    book = _text(attrs["codebook"], Codebook.LAYER.value)
    return Settings(
        sparse_ratio=ratio if ratio > 0 and quality <= 0 else 0.0,
        prune_quality=quality if quality > 0 else None,
        class_num=class_num if 2 <= class_num <= 256 else Settings.class_num,
        quantize_term=bool(int(attrs["quantize_term"])),
        centroid_init=CentroidInit(init) if init in {c.value for c in CentroidInit} else CentroidInit.LINEAR,
        index_bits=fixed if 1 <= fixed <= 16 else None,
        form=Form(form) if form in {f.value for f in Form} else Form.AUTO,
        seed=max(0, int(attrs["seed"])),
        bias=BiasType(bias) if bias in {b.value for b in BiasType} else BiasType.FLOAT32,
        codebook=Codebook(book) if book in {b.value for b in Codebook} else Codebook.LAYER,
        group_rows=int(attrs["group_rows"]) if int(attrs["group_rows"]) >= 1 else Settings.group_rows,
    )


@dataclass(frozen=True)
class Decoded:
    """A decoder's weight rebuilt in NumPy, with its codebook, per-element codes, keep-mask and channel scales
    (float32 in the stored broadcast shape, or None)."""

    weights: np.ndarray
    codebook: np.ndarray | None
    codes: np.ndarray | None
    mask: np.ndarray | None
    scale: np.ndarray | None = None


def _scale(dec: Decoder, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The decoder's channel scales as float32 in their broadcast shape, or None."""
    if not dec.scaled:
        return None
    return arrays[dec.inputs[SCALE]].astype(np.float32)


def scale_vector(scale: np.ndarray) -> tuple[np.ndarray, int]:
    """A stored broadcast-shaped scale as ``([C], axis)``: the axis is the one longer than 1 (0 when none is)."""
    longer = [i for i, d in enumerate(scale.shape) if d > 1]
    return scale.astype(np.float32).ravel(), (longer[0] if longer else 0)


def shift_codes(codes: np.ndarray, groups: tuple[int, int, int, int], reserves_zero: bool, sign: int,
                positions: np.ndarray | None = None) -> np.ndarray:
    """Codes moved between their group's codebook and the whole one: ``codes + sign * group_size * g`` with ``g`` the
    group of each code's channel (``groups`` = ``(group_rows, group_size, group_stride, channels)``); a reserved
    zero stays 0. ``codes``: every position in flat order (``positions`` None), else the codes at ``positions``.

    The offsets broadcast per channel, so no position-sized int64 array is made (VGG-16's fc6 has 10**8 codes);
    the result is uint16, or uint32 when the whole codebook has more than 65536 entries.
    """
    rows, size, stride, channels = groups
    offsets = (np.arange(channels, dtype=np.int64) // rows) * size
    top = int(offsets[-1]) + size + 1 if channels else 1
    dtype = np.uint16 if top <= 1 << 16 else np.uint32
    flat = np.asarray(codes).ravel()
    if positions is None:  # flat position = (outer * channels + c) * stride + inner
        shaped = flat.astype(dtype).reshape(-1, channels, stride)
        offset = offsets.astype(dtype).reshape(1, channels, 1)
    else:
        shaped = flat.astype(dtype)
        offset = offsets.astype(dtype)[(np.asarray(positions) // stride) % channels]
    moved = shaped + offset if sign > 0 else shaped - offset  # kept codes stay within range; pruned ones are reset
    if reserves_zero:
        moved = np.where(shaped > 0, moved, dtype(0))
    return moved.ravel()


def _global_codes(dec: Decoder, stored: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """Stored codes as indices into the whole codebook (:func:`shift_codes`; other decoders' codes are that already)."""
    return stored if dec.groups is None else shift_codes(stored, dec.groups, dec.reserves_zero, +1, positions)


def group_axis(dec: Decoder) -> int:
    """The channel axis of a grouped decoder's groups: the one with its ``channels`` and ``group_stride``."""
    _, _, stride, channels = dec.groups
    for axis in range(len(dec.shape) - 1, -1, -1):
        if dec.shape[axis] == channels and int(np.prod(dec.shape[axis + 1:], dtype=np.int64)) == stride:
            return axis
    return 0


def decode(dec: Decoder, arrays: dict[str, np.ndarray]) -> Decoded:
    """Rebuild one weight from its initializer arrays (name -> array), exactly as the ONNX decoder does."""
    positions = None
    if dec.kind != DENSE:
        positions = decode_positions(unpack_bits(arrays[dec.inputs[GAPS]], dec.index_bits, dec.count))
    if dec.kind == SPARSE_VALUES:
        values = arrays[dec.inputs["values"]].astype(np.float32).ravel()
        flat = np.zeros(dec.numel, np.float32)
        flat[positions] = values
        mask = np.zeros(dec.numel, bool)
        mask[positions[values != 0]] = True
        return Decoded(flat.reshape(dec.shape), None, None, mask.reshape(dec.shape))
    codebook = arrays[dec.inputs["codebook"]].astype(np.float32).ravel()
    stored = _global_codes(dec, unpack_bits(arrays[dec.inputs[CODES]], dec.code_bits, dec.count), positions)
    codes = np.zeros(dec.numel, np.uint16 if codebook.size <= 65536 else np.uint32)
    if positions is None:
        codes[:] = stored
    else:
        codes[positions] = stored
    codes = codes.reshape(dec.shape)
    mask = codes != 0 if dec.reserves_zero else None
    scale = _scale(dec, arrays)
    weights = codebook[codes] if scale is None else codebook[codes] * scale
    return Decoded(weights, codebook, codes, mask, scale)


def decode_weight(dec: Decoder, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Only the weight of :func:`decode`, without per-element codes and mask (less memory)."""
    scale = _scale(dec, arrays)
    if dec.kind == DENSE:
        codes = _global_codes(dec, unpack_bits(arrays[dec.inputs[CODES]], dec.code_bits, dec.count), None)
        weights = arrays[dec.inputs["codebook"]].astype(np.float32).ravel()[codes].reshape(dec.shape)
        return weights if scale is None else weights * scale
    positions = decode_positions(unpack_bits(arrays[dec.inputs[GAPS]], dec.index_bits, dec.count))
    if dec.kind == SPARSE:
        codes = _global_codes(dec, unpack_bits(arrays[dec.inputs[CODES]], dec.code_bits, dec.count), positions)
        values = arrays[dec.inputs["codebook"]].astype(np.float32).ravel()[codes]
    else:
        values = arrays[dec.inputs["values"]].astype(np.float32).ravel()
    flat = np.zeros(dec.numel, np.float32)
    flat[positions] = values
    return flat.reshape(dec.shape) if scale is None else flat.reshape(dec.shape) * scale


def remove_decoders(model: onnx.ModelProto, full: bool = True) -> tuple[onnx.ModelProto, dict[str, tuple]]:
    """A copy of ``model`` without decoder nodes, their initializers, the decoder functions and the ``onnx_dc`` opset.

    Returns it and, per weight name, ``(Decoder, Decoded)`` (``full``) or ``(Decoder, weight array)``.
    The decoded weights are not in the returned graph.
    """
    out, decoders, arrays = without_decoders(model)
    rebuild = decode if full else decode_weight
    return out, {d.weight: (d, rebuild(d, arrays)) for d in decoders}


def without_decoders(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Decoder], dict[str, np.ndarray]]:
    """Like :func:`remove_decoders`, decoding nothing: the decoders and their input arrays, for decoding one at a time."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    decoders = [read_decoder(n) for n in decoder_nodes(graph)]
    used = {name for d in decoders for name in d.inputs.values()}
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in used}
    kept_nodes = [n for n in graph.node if kind_of(n) is None]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept = [t for t in graph.initializer if t.name not in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    functions = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(functions)
    opsets = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
    biases.unhalve(graph)
    return out, decoders, arrays


def strip_decoders(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, tuple[Decoder, Decoded]]]:
    """A copy of ``model`` whose decoded weights are float32 initializers again (:func:`remove_decoders`).

    Returns the plain model and, per weight name, its decoder and decoded arrays.
    """
    out, decoded = remove_decoders(model)
    out.graph.initializer.extend(numpy_helper.from_array(d.weights, w) for w, (_, d) in decoded.items())
    return out, decoded


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def skipped_entries(meta: dict[str, str], graph: onnx.GraphProto | None = None) -> list[list[str]]:
    """The skipped parameters: [node, op_type, tensor, reason] each.

    The record leaves out the biases of compressed layers (since format 3); given the
    compressed ``graph`` they are derived from it and put first.
    Entries an older file records are not repeated.
    """
    recorded = json.loads(meta.get(META_SKIPPED, "[]"))
    if graph is None:
        return recorded
    listed = {(e[0], e[2]) for e in recorded}
    derived = [e for e in bias_entries(graph) if (e[0], e[2]) not in listed]
    return derived + recorded


def bias_entries(graph: onnx.GraphProto) -> list[list[str]]:
    """The skipped entries of the compressed layers' biases (onnx_dc/graph/biases.py), derived from the graph."""
    return biases.bias_entries(graph, [n.output[0] for n in decoder_nodes(graph)])
