"""Rebuild a :class:`CompressionState` from a ``*.dc.onnx`` model, to fine-tune it again.

Each decoder node is decoded in NumPy (docs/DCONNX.md):

    codes = unpack(codes, code_bits, count);  pos = cumsum(unpack(gaps, index_bits, count) + 1) - 1
    W.flat[pos] = codebook[codes]  (sparse)   or   W = codebook[codes]  (dense)

The decoder node, its initializers and the decoder functions are removed and ``W``
becomes a float32 initializer again; the layer state gets the codebook, the per-element
codes and (when any code is 0) the mask ``codes != 0``. Settings come back from the
node's attributes, so lowering the state again reproduces the file's layout.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.config import CentroidInit, Settings
from onnx_dc.errors import ModelError
from onnx_dc.graph import decoders
from onnx_dc.graph.weights import Skipped, find_weights
from onnx_dc.numerics.bitpack import unpack_bits
from onnx_dc.numerics.sparse import decode_positions
from onnx_dc.passes.lower import META_SKIPPED, META_SOURCE_BYTES
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.plan import Plan, PlanEntry


def _decode(node: onnx.NodeProto, attrs: dict, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """(weights, codebook or None, codes or None, mask or None) of one decoder node."""
    shape = tuple(int(d) for d in attrs["shape"])
    numel, count = int(attrs["numel"]), int(attrs["count"])
    if node.op_type == decoders.DECODE_SPARSE_VALUES:
        values = inits[node.input[0]].astype(np.float32)
        pos = decode_positions(unpack_bits(inits[node.input[1]], int(attrs["index_bits"]), count))
        flat = np.zeros(numel, np.float32)
        flat[pos] = values
        mask = np.zeros(numel, bool)
        mask[pos[values != 0]] = True
        return flat.reshape(shape), None, None, mask.reshape(shape)
    codebook = inits[node.input[0]].astype(np.float32).ravel()
    stored = unpack_bits(inits[node.input[1]], int(attrs["code_bits"]), count)
    codes = np.zeros(numel, np.uint16)
    if node.op_type == decoders.DECODE_SPARSE:
        pos = decode_positions(unpack_bits(inits[node.input[2]], int(attrs["index_bits"]), count))
        codes[pos] = stored
    else:
        codes[:] = stored
    codes = codes.reshape(shape)
    mask = codes != 0 if not codes.all() else None
    return codebook[codes], codebook, codes, mask


def _settings(attrs: dict) -> Settings:
    ratio = float(attrs.get("sparse_ratio", -1.0))
    quality = float(attrs.get("prune_quality", -1.0))
    class_num = int(attrs.get("class_num", 0))
    init = attrs.get("centroid_init", b"linear")
    init = init.decode() if isinstance(init, bytes) else str(init)
    return Settings(
        sparse_ratio=ratio if ratio > 0 and quality <= 0 else 0.0,
        prune_quality=quality if quality > 0 else None,
        class_num=class_num if 2 <= class_num <= 256 else Settings.class_num,
        quantize_term=bool(int(attrs.get("quantize_term", 0))),
        centroid_init=CentroidInit(init) if init in {c.value for c in CentroidInit} else CentroidInit.LINEAR,
    )


def state_from_dc(model: onnx.ModelProto, name: str = "model") -> CompressionState:
    """The compression state a ``*.dc.onnx`` model was lowered from (weights, codebooks, codes, masks).

    Raises:
        ModelError: when the model holds no onnx_dc decoder node.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    dc_nodes = [n for n in graph.node if n.domain == decoders.DOMAIN and n.op_type in decoders.DECODER_OPS]
    if not dc_nodes:
        raise ModelError(f"{name}: not compressed by onnx_dc (no decoder nodes); use compress instead")
    inits = {t.name: t for t in graph.initializer}
    used = {i for n in dc_nodes for i in n.input}
    arrays = {i: numpy_helper.to_array(inits[i]) for i in used}
    decoded = {}
    for node in dc_nodes:
        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        decoded[node.output[0]] = (_decode(node, attrs, arrays), _settings(attrs))
    kept_nodes = [n for n in graph.node if n not in dc_nodes]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_inits = [t for t in graph.initializer if t.name not in used]
    kept_inits += [numpy_helper.from_array(d[0][0], w) for w, d in decoded.items()]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    functions = [f for f in out.functions if f.domain != decoders.DOMAIN]
    del out.functions[:]
    out.functions.extend(functions)
    opsets = [o for o in out.opset_import if o.domain != decoders.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(opsets)

    meta = {p.key: p.value for p in model.metadata_props}
    skipped = tuple(Skipped(*s) for s in json.loads(meta.get(META_SKIPPED, "[]")))
    sites = {s.name: s for s in find_weights(out).sites}
    entries, layers = [], {}
    for wname, ((weights, codebook, codes, mask), settings) in decoded.items():
        if wname not in sites:
            raise ModelError(f"{name}: decoded weight {wname!r} feeds no compressible node")
        entry = PlanEntry(sites[wname], settings, "decoded from the compressed model")
        entries.append(entry)
        layers[wname] = LayerState(entry, weights.astype(np.float32), mask=mask, codebook=codebook, codes=codes)
    source = meta.get(META_SOURCE_BYTES)
    return CompressionState(out, Plan(tuple(entries), skipped), layers,
                            int(source) if source and source.isdigit() else None)
