"""Bring any input model into the form the compression passes expect.

* IR < 4 listed initializers as graph inputs too; such inputs are dropped, because
  onnxruntime treats an initializer that is also an input as overridable and will not
  fold it.
* ``ai.onnx`` opset < 13 is converted to 13 (the decoder functions must share the
  model's opset and need opset 13 ops); opset > 21 is refused (onnxruntime 1.19 cannot run it).
* IR version is set to 10; unnamed nodes get stable names ``{op_type}_{index}``.
* Constant nodes that hold a weight become initializers, so every weight is an initializer.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from onnx_dc.errors import ModelError
from onnx_dc.graph.decoders import MIN_OPSET
from onnx_dc.graph.io import MAX_IR_VERSION, MAX_OPSET


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset version."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ModelError("the model imports no ai.onnx opset")


def normalize(model: onnx.ModelProto, name: str = "model") -> onnx.ModelProto:
    """Return a normalized copy of ``model`` (see module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if out.ir_version < 4:
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
    constants_to_initializers(out)
    return out


def _convert_opset(model: onnx.ModelProto, name: str, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors of many kinds
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
    graph = model.graph
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
