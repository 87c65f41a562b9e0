"""Rebuild a :class:`CompressionState` from a ``*.dc.onnx`` model, to fine-tune it again.

Each decoder node is decoded in NumPy by onnx_dc/graph/layout.py (docs/DCONNX.md):

    codes = unpack(codes, code_bits, count);  pos = cumsum(unpack(gaps, index_bits, count) + 1) - 1
    W.flat[pos] = codebook[codes]  (sparse)   or   W = codebook[codes]  (dense)
    W = W * scale  (channel scales, ``codebook: channel``)
    codes of a grouped codebook (``codebook: group``) read back as indices into the whole codebook

The decoder node, its initializers and the decoder functions are removed and ``W``
becomes a float32 initializer again; the layer state gets the codebook, the per-element
codes and, in pruned layers, the mask ``codes != 0``. Every setting (form and fixed index
width included) comes back from the node's attributes, so lowering the state again
reproduces the file's layout.
"""

from __future__ import annotations


import numpy as np
import onnx

from onnx_dc.errors import ModelError
from onnx_dc.graph import layout
from onnx_dc.graph.weights import Skipped, find_weights
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.plan import Plan, PlanEntry


def state_from_dc(model: onnx.ModelProto, name: str = "model") -> CompressionState:
    """The compression state a ``*.dc.onnx`` model was lowered from (weights, codebooks, codes, masks).

    Raises:
        ModelError: when the model holds no onnx_dc decoder node.
    """
    if not layout.decoder_nodes(model.graph):
        raise ModelError(f"{name}: not compressed by onnx_dc (no decoder nodes); use compress instead")
    out, decoded = layout.strip_decoders(model)
    meta = layout.metadata(model)
    skipped = tuple(Skipped(*s) for s in layout.skipped_entries(meta, model.graph))
    sites = {s.name: s for s in find_weights(out).sites}
    entries, layers = [], {}
    for wname, (dec, arrays) in decoded.items():
        if wname not in sites:
            raise ModelError(f"{name}: decoded weight {wname!r} feeds no compressible node")
        entry = PlanEntry(sites[wname], dec.settings, "decoded from the compressed model")
        entries.append(entry)
        layers[wname] = LayerState(entry, arrays.weights.astype(np.float32), mask=arrays.mask,
                                   codebook=arrays.codebook, codes=arrays.codes)
        if arrays.scale is not None:
            layers[wname].scale, layers[wname].scale_axis = layout.scale_vector(arrays.scale)
        if dec.groups is not None:
            layers[wname].group_rows, layers[wname].scale_axis = dec.groups[0], layout.group_axis(dec)
    source = meta.get(layout.META_SOURCE_BYTES)
    return CompressionState(out, Plan(tuple(entries), skipped), layers,
                            int(source) if source and source.isdigit() else None)
