"""Bring any input model into the form the compression passes expect.

* Initializers listed as graph inputs too (IR < 4 required it; older PyTorch exports kept
  the habit at IR 4-6) are dropped from the inputs: onnxruntime treats such an input as
  overridable and will not fold it, and a compressed weight is not meant to be overridden.
* ``ai.onnx`` opset < 13 is converted to 13 (the decoder functions must share the
  model's opset and need opset 13 ops); opset > 21 is refused (onnxruntime 1.19 cannot run it).
* IR version is set to 10; unnamed nodes get stable names ``{op_type}_{index}``; an
  unsorted graph is sorted topologically (:mod:`onnx_dc.graph.walk`).
* Constant nodes that hold a weight become initializers, so every weight is an initializer.
* Initializers of subgraphs (If / Loop / Scan bodies) move to the main graph, renamed when
  their name is taken, and the subgraph reads them from the outer scope (as exporters that
  share weights between branches already do). Every weight then sits in the main graph,
  where it is compressed and rebuilt once, and onnxruntime folds it once, not per branch.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import numpy_helper

from onnx_dc.errors import ModelError
from onnx_dc.graph.decoders import MIN_OPSET
from onnx_dc.graph.io import MAX_IR_VERSION, MAX_OPSET
from onnx_dc.graph.walk import all_graphs, node_subgraphs, sort_graph


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset version."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ModelError("the model imports no ai.onnx opset")


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's initializers that are also listed as graph inputs."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in inits]


def normalize(model: onnx.ModelProto, name: str = "model", copy: bool = True) -> onnx.ModelProto:
    """Return a normalized copy of ``model`` (see module docstring); ``copy=False`` works in place."""
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    if initializer_inputs(out):
        inits = {t.name for t in out.graph.initializer}
        keep = [i for i in out.graph.input if i.name not in inits]
        del out.graph.input[:]
        out.graph.input.extend(keep)
    out.ir_version = MAX_IR_VERSION  # before conversion: the converter reads IR < 4 rules otherwise
    opset = ai_onnx_opset(out)
    if opset > MAX_OPSET:
        raise ModelError(f"{name}: ai.onnx opset {opset} is newer than {MAX_OPSET}; re-export with opset <= {MAX_OPSET}")
    if opset < MIN_OPSET:
        out = _convert_opset(out, name, opset)
    out.ir_version = MAX_IR_VERSION
    for i, node in enumerate(out.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    sort_graph(out.graph)
    constants_to_initializers(out)
    hoist_subgraph_initializers(out)
    return out


def hoist_subgraph_initializers(model: onnx.ModelProto) -> int:
    """Move subgraph initializers and float Constant nodes to the main graph (in place).

    Returns the number moved. A subgraph initializer that is also a subgraph input
    (overridable) stays where it is.
    """
    defined = Counter(name for g in all_graphs(model.graph) for name in _defined(g))
    moved = 0
    for node in model.graph.node:
        for sub in node_subgraphs(node):
            moved += _hoist(sub, model.graph, defined)
    return moved


def _defined(graph: onnx.GraphProto) -> list[str]:
    names = [t.name for t in graph.initializer] + [i.name for i in graph.input]
    return names + [o for n in graph.node for o in n.output]


def _hoist(graph: onnx.GraphProto, main: onnx.GraphProto, defined: Counter) -> int:
    moved = sum(_hoist(sub, main, defined) for node in graph.node for sub in node_subgraphs(node))
    _constants_to_initializers(graph)
    inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in inputs]
    for tensor in graph.initializer:
        if tensor.name in inputs:
            continue
        name = tensor.name
        if defined[name] > 1:  # defined elsewhere too: give the hoisted weight a fresh name
            name = next(f"{tensor.name}__{i}" for i in range(1, 1 << 30) if f"{tensor.name}__{i}" not in defined)
            _rename_reads(graph, tensor.name, name)
            defined[name] += 1
        hoisted = main.initializer.add()
        hoisted.CopyFrom(tensor)
        hoisted.name = name
        moved += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return moved


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    for g in all_graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        for out in g.output:
            if out.name == old:
                out.name = new


def _convert_opset(model: onnx.ModelProto, name: str, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except (RuntimeError, version_converter.ConvertError) as exc:
        # how the converter refuses a model: its ConvertError, or a bare RuntimeError from a failed
        # assertion of an adapter; an error of another type comes from the call, not from the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{name}: cannot convert ai.onnx opset {opset} to {MIN_OPSET} ({first}); re-export with opset >= {MIN_OPSET}"
        ) from None
    return converted


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn ``Constant`` nodes with a tensor ``value`` of floats into initializers (in place).

    Returns the number converted. Only float tensors of rank >= 1 are touched: those
    are the weights; shape constants and scalars stay as they are.
    """
    return _constants_to_initializers(model.graph)


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    keep, moved = [], 0
    for node in graph.node:
        tensor = _float_constant(node)
        if tensor is None:
            keep.append(node)
            continue
        init = numpy_helper.from_array(numpy_helper.to_array(tensor), node.output[0])
        graph.initializer.append(init)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _float_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name != "value" or attr.type != onnx.AttributeProto.TENSOR:
        return None
    t = attr.t
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    if t.data_type not in floats or len(t.dims) == 0:
        return None
    return t
