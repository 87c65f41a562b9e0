"""Biases of compressed layers: found from the graph, and optionally stored in half precision.

A compressed layer's bias is the bias input of a node that reads a decoded weight (directly
or through pass-through ops): the input the op table names as its bias (C of Conv / ConvTranspose /
Gemm, B of LSTM / GRU / RNN). The ``*.dc.onnx`` does not list these biases in its ``onnx_dc.skipped`` record: the
readers derive the entries from the graph (:func:`bias_entries`).

With the setting ``bias: float16`` a bias ``b`` is stored as

    b/dc/f16 = float16(b)   (initializer),   b = Cast(b/dc/f16, to=float32)   (node b/dc/cast)

so its consumers are unchanged and onnxruntime folds the Cast at session creation. Readers
turn it back into the float32 initializer ``b`` = float32(float16(b)) (:func:`unhalve`), which
is exactly the value the Cast computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.graph import external, ops
from onnx_dc.graph.ops import PASS_THROUGH
from onnx_dc.graph.walk import all_nodes

FLOAT32_REASON = "bias (biases stay float32)"  # the inventory's reason (onnx_dc/graph/weights.py)
FLOAT16_REASON = "bias stored as float16 (bias: float16)"
HALF_SUFFIX, CAST_SUFFIX = "/dc/f16", "/dc/cast"


def layer_biases(graph: onnx.GraphProto, weights: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    """Weight name -> (node, op_type, bias value name) of the biased nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in all_nodes(graph):
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out = {}
    for weight in weights:
        frontier, found = [weight], []
        while frontier:
            for reader in readers.get(frontier.pop(0), []):
                if reader.op_type in PASS_THROUGH and reader.domain in ("", "ai.onnx"):
                    frontier.append(reader.output[0])
                    continue
                spec = ops.of(reader)
                slot = spec.bias if spec is not None and spec.compressible else None
                if slot is not None and len(reader.input) > slot and reader.input[slot]:
                    entry = (reader.name, reader.op_type, reader.input[slot])
                    if entry not in found:
                        found.append(entry)
        out[weight] = found
    return out


def half_casts(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Bias name -> the Cast node that rebuilds it from its float16 initializer."""
    halves = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    return {n.output[0]: n for n in graph.node
            if n.op_type == "Cast" and n.name == n.output[0] + CAST_SUFFIX
            and list(n.input) == [n.output[0] + HALF_SUFFIX] and n.input[0] in halves}


def bias_entries(graph: onnx.GraphProto, weights: list[str]) -> list[list[str]]:
    """The ``onnx_dc.skipped`` entries [node, op_type, tensor, reason] of the biases of these weights' layers."""
    inits = {t.name for t in graph.initializer}
    halves = half_casts(graph)
    entries = []
    for found in layer_biases(graph, weights).values():
        for node, op, bias in found:
            if bias in halves:
                entry = [node, op, bias, FLOAT16_REASON]
            elif bias in inits:
                entry = [node, op, bias, FLOAT32_REASON]
            else:
                continue
            if entry not in entries:
                entries.append(entry)
    return entries


def halve(model: onnx.ModelProto, names: list[str]) -> None:
    """Store the float32 initializers ``names`` of ``model`` as float16 plus a Cast back (in place)."""
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    wanted = set(names) - graph_inputs - set(half_casts(graph))
    casts, kept = [], []
    for init in graph.initializer:
        if init.name in wanted and init.data_type == TensorProto.FLOAT:
            half = external.to_array(init).astype(np.float16)  # a lazily loaded model maps its tensors
            kept.append(numpy_helper.from_array(half, init.name + HALF_SUFFIX))
            casts.append(oh.make_node("Cast", [init.name + HALF_SUFFIX], [init.name], name=init.name + CAST_SUFFIX,
                                      to=TensorProto.FLOAT))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def unhalve(graph: onnx.GraphProto) -> None:
    """Replace each float16 bias and its Cast by the float32 initializer the Cast computes (in place)."""
    casts = half_casts(graph)
    if not casts:
        return
    halves = {c.input[0] for c in casts.values()}
    inits = []
    for init in graph.initializer:
        if init.name in halves:
            name = init.name[: -len(HALF_SUFFIX)]
            inits.append(numpy_helper.from_array(external.to_array(init).astype(np.float32), name))
        else:
            inits.append(init)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    nodes = [n for n in graph.node if not (n.op_type == "Cast" and n.output and n.output[0] in casts
                                             and n.name == n.output[0] + CAST_SUFFIX)]
    del graph.node[:]
    graph.node.extend(nodes)
