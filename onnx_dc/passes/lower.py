"""Lowering pass: write each compressed weight as a decoder call (the ``*.dc.onnx`` form).

For a shared layer with codes ``q`` (code bits ``c = ceil(log2(codebook size))``: k + 1 when
pruned, code 0 being the reserved zero, else k) the candidates are

    dense:   bytes = ceil(n c / 8)
    sparse:  bytes = ceil(M c / 8) + ceil(M b / 8),  M = kept + fillers(b)   (b minimises bytes)

and for a pruned, unshared layer ``4 M + ceil(M b / 8)``; channel scales (``codebook: channel``) add
2 bytes per channel (float16, the decoder's ``scale`` input). A grouped layer (``codebook: group``)
stores each code within its group's codebook (``c = ceil(log2(k + z))`` for k values a group), the
codebook holding every group's values. The smallest wins unless the
config fixes the form or the index width; a layer whose best form is not smaller than
float32 stays a float32 initializer holding its pruned / shared values. With ``bias: float16``
the biases of a compressed layer become float16 plus a Cast (onnx_dc/graph/biases.py). docs/DCONNX.md
is the byte layout, onnx_dc/graph/layout.py its decoder nodes, onnx_dc/graph/decoders.py
the functions that read it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.config import BiasType, Form
from onnx_dc.errors import ModelError
from onnx_dc.graph import biases, decoders, layout
from onnx_dc.graph.normalize import ai_onnx_opset
from onnx_dc.graph.weights import Skipped
from onnx_dc.numerics.bitpack import pack_bits, packed_size
from onnx_dc.numerics.sparse import best_index_bits, encode_positions, kept_gaps, sparse_bytes
from onnx_dc.passes.state import CompressionState, LayerState


@dataclass(frozen=True)
class Encoding:
    """How one weight is stored: the decoder op (or ``raw``), widths, and its new initializers."""

    op: str  # a layout kind (layout.DENSE, ...), or "raw"
    code_bits: int = 0
    index_bits: int = 0
    count: int = 0
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # suffix -> array
    reason: str = ""


def encode_layer(layer: LayerState) -> Encoding:
    """Pick and build the smallest storage of one layer (see the module docstring)."""
    s = layer.entry.settings
    n = layer.weights.size
    raw_bytes = 4 * n
    if layer.codebook is not None:
        enc = _encode_shared(layer, s.form, s.index_bits)
        if layer.scale is not None:
            enc.tensors[layout.SCALE] = layer.scale.astype(np.float16).reshape(layer.scale_shape())
    elif layer.mask is not None:
        enc = _encode_values(layer, s.index_bits)
    else:
        return Encoding("raw", reason="nothing pruned or shared")
    payload = sum(t.nbytes for t in enc.tensors.values())
    if payload >= raw_bytes:
        return Encoding("raw", reason=f"compressed form ({payload} B) is not smaller than float32 ({raw_bytes} B)")
    return enc


def _encode_shared(layer: LayerState, form: Form, fixed_index_bits: int | None) -> Encoding:
    codes = layer.stored_codes()
    entries = layer.group_size() + int(layer.reserves_zero) if layer.group_rows else layer.codebook.size
    code_bits = max(1, math.ceil(math.log2(entries)))
    dense_bytes = packed_size(codes.size, code_bits)
    positions = np.flatnonzero(layer.mask.ravel()) if layer.mask is not None else np.arange(codes.size)
    gaps = kept_gaps(positions)
    index_bits = fixed_index_bits or best_index_bits(gaps, code_bits)
    use_sparse = form == Form.SPARSE or (form == Form.AUTO and sparse_bytes(gaps, index_bits, code_bits) < dense_bytes)
    if not use_sparse:
        return Encoding(layout.DENSE, code_bits, 0, codes.size,
                        {"codebook": layer.codebook, "codes": pack_bits(codes, code_bits)})
    entries = encode_positions(positions, index_bits)
    stored = np.zeros(entries.positions.size, np.uint16)
    stored[entries.real] = codes[positions]
    return Encoding(layout.SPARSE, code_bits, index_bits, stored.size, {
        "codebook": layer.codebook, "codes": pack_bits(stored, code_bits), "gaps": pack_bits(entries.gaps, index_bits),
    })


def _encode_values(layer: LayerState, fixed_index_bits: int | None) -> Encoding:
    flat = layer.weights.ravel()
    positions = np.flatnonzero(layer.mask.ravel())
    index_bits = fixed_index_bits or best_index_bits(kept_gaps(positions), 32)
    entries = encode_positions(positions, index_bits)
    values = np.zeros(entries.positions.size, np.float32)
    values[entries.real] = flat[positions]
    return Encoding(layout.SPARSE_VALUES, 0, index_bits, values.size,
                    {"values": values, "gaps": pack_bits(entries.gaps, index_bits)})


def _decoder_node(layer: LayerState, enc: Encoding) -> onnx.NodeProto:
    if layer.weights.size > decoders.MAX_NUMEL:
        raise ModelError(f"{layer.label}: {layer.weights.size} elements; a compressed weight holds at most "
                         f"{decoders.MAX_NUMEL}; skip this weight in the config")
    return layout.make_decoder_node(layer.name, enc.op, enc.code_bits, enc.index_bits, enc.count, layer.weights.shape,
                                    layer.entry.settings, shared=layer.codebook is not None,
                                    reserves_zero=layer.mask is not None, with_scale=layout.SCALE in enc.tensors,
                                    scale_axis=layer.scale_axis,
                                    groups=layer.group_layout()[:2] if layer.group_rows and layer.codebook is not None else None)


def lower(state: CompressionState, extra_skipped: tuple[Skipped, ...] = ()) -> onnx.ModelProto:
    """Build the ``*.dc.onnx`` model from the state (the state is not changed)."""
    out = onnx.ModelProto()
    out.CopyFrom(state.model)
    graph = out.graph
    skipped = list(state.plan.skipped) + list(extra_skipped)
    decoder_nodes, new_inits, used_ops = [], [], set()
    replaced = {}
    for name, layer in state.layers.items():
        enc = encode_layer(layer)
        if enc.op == "raw":
            replaced[name] = numpy_helper.from_array(layer.weights, name)
            skipped.append(Skipped(layer.entry.site.node, layer.entry.site.op_type, name, enc.reason))
            continue
        replaced[name] = None
        node = _decoder_node(layer, enc)
        used_ops.add(node.op_type)
        decoder_nodes.append(node)
        new_inits.extend(numpy_helper.from_array(arr, f"{name}/dc/{suffix}") for suffix, arr in enc.tensors.items())
    kept_inits = []
    for init in graph.initializer:
        if init.name not in replaced:
            kept_inits.append(init)
        elif replaced[init.name] is not None:
            kept_inits.append(replaced[init.name])
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(decoder_nodes + nodes)
    _add_functions(out, used_ops)
    _halve_biases(out, [n.output[0] for n in decoder_nodes
                        if state.layers[n.output[0]].entry.settings.bias == BiasType.FLOAT16])
    derived = {(e[0], e[2]) for e in layout.bias_entries(graph)}
    _set_metadata(out, state, [s for s in skipped if (s.node, s.tensor) not in derived], used_ops)
    return out


def _halve_biases(model: onnx.ModelProto, weights: list[str]) -> None:
    """Store the biases of these weights' layers in float16 (setting ``bias: float16``)."""
    found = biases.layer_biases(model.graph, weights)
    biases.halve(model, [bias for entries in found.values() for _, _, bias in entries])


def _add_functions(model: onnx.ModelProto, used_ops: set[str]) -> None:
    if not used_ops:
        return
    model.functions.extend(decoders.make_functions(ai_onnx_opset(model), used_ops))
    model.opset_import.append(oh.make_opsetid(layout.DOMAIN, layout.DOMAIN_VERSION))


def _set_metadata(model: onnx.ModelProto, state: CompressionState, skipped: list[Skipped], used_ops: set[str]) -> None:
    entries = {
        layout.META_VERSION: layout.format_version(used_ops),
        layout.META_SKIPPED: json.dumps([[s.node, s.op_type, s.tensor, s.reason] for s in skipped]),
        layout.META_SOURCE_WEIGHT_BYTES: str(float_parameter_bytes(state.model)),
    }
    if state.source_bytes is not None:
        entries[layout.META_SOURCE_BYTES] = str(state.source_bytes)
    if state.plan.notes:
        entries[layout.META_NOTES] = json.dumps(list(state.plan.notes))
    set_metadata(model, entries)


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set metadata_props keys (replacing existing ones), keeping the other keys in order."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in kept + sorted(entries.items()):
        model.metadata_props.add(key=key, value=value)


def float_parameter_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all floating-point initializers stored as float32 (4 bytes per element)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    return sum(4 * int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if t.data_type in floats)
