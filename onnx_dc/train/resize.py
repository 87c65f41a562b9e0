"""Resize as matrix products, for training graphs (onnxruntime-training 1.19 has no CPU kernel for ResizeGrad).

Every Resize mode (nearest, linear, cubic; any coordinate transformation, antialias, fractional
factors) resizes each axis on its own: along a resized axis of length n -> m, the output is
``M x`` for one fixed m x n matrix M. Where the input's resized axes have known lengths and the
scales or sizes are constants, M is read off onnxruntime's own Resize, run with the node's
attributes on the n unit vectors, so the equivalent computes exactly the same weights:

    Y = M_h X M_w'        (X [..., h, w]: MatMul(M_h, MatMul(X, M_w')))

Only the last two axes may be resized; ``axes``, ``keep_aspect_ratio_policy`` other than stretch
and tf_crop_and_resize (a constant outside its region) leave the node as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.graph.io import MAX_IR_VERSION
from onnx_dc.graph.walk import attributes
from onnx_dc.runtime.ort import onnxruntime_errors

_OPSET = 19  # onnxruntime 1.19 runs Resize 19 (antialias, keep_aspect_ratio_policy)


def axis_matrix(node: onnx.NodeProto, n: int, m: int, scale: float | None, rank: int, axis: int) -> np.ndarray:
    """The m x n matrix the Resize ``node`` applies along ``axis`` (of ``rank``) of length n to m:
    onnxruntime's Resize on the n unit vectors, stacked along axis 0 (a batch axis it leaves alone)."""
    import onnxruntime

    shape = [n] + [1] * (rank - 1)
    shape[axis] = n
    basis = np.zeros(shape, np.float32)
    for k in range(n):
        index = [k] + [0] * (rank - 1)
        index[axis] = k
        basis[tuple(index)] = 1.0
    attrs = {k: v for k, v in attributes(node).items() if k not in ("axes", "keep_aspect_ratio_policy")}
    inits = []
    inputs = ["x", "", "", ""]
    if scale is not None:
        scales = np.ones(rank, np.float32)
        scales[axis] = scale
        inits.append(numpy_helper.from_array(scales, "scales"))
        inputs[2] = "scales"
    else:
        sizes = np.array(shape, np.int64)
        sizes[axis] = m
        inits.append(numpy_helper.from_array(sizes, "sizes"))
        inputs[3] = "sizes"
    while not inputs[-1]:
        inputs.pop()
    graph = oh.make_graph([oh.make_node("Resize", inputs, ["y"], **attrs)], "axis",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", _OPSET)])
    model.ir_version = MAX_IR_VERSION
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": basis})[0]  # [n, ..., m (at axis), ...]
    columns = np.moveaxis(out, axis, 1).reshape(n, -1)
    if columns.shape[1] != m:
        raise ValueError(f"Resize gave {columns.shape[1]} values along axis {axis}, expected {m}")
    return columns.T.copy()


def resize_as_matmul(node: onnx.NodeProto, shapes: dict[str, list[int]], consts: dict) -> list[onnx.NodeProto] | None:
    """Resize as MatMul with each resized axis's matrix; None where the lengths or factors are not known."""
    attrs = attributes(node)
    if ("axes" in attrs or attrs.get("keep_aspect_ratio_policy", b"stretch") not in (b"stretch", "stretch")
            or attrs.get("coordinate_transformation_mode") in (b"tf_crop_and_resize", "tf_crop_and_resize")):
        return None  # tf_crop_and_resize fills outside its region with a constant: not a matrix product
    inputs = list(node.input) + [""] * (4 - len(node.input))
    x_shape, y_shape = shapes.get(inputs[0]), shapes.get(node.output[0])
    scales = consts.get(inputs[2]) if inputs[2] else None
    sizes = consts.get(inputs[3]) if inputs[3] else None
    if x_shape is None or len(x_shape) < 2 or (scales is None or scales.size == 0) and sizes is None:
        return None
    rank = len(x_shape)
    if scales is not None and scales.size:
        wanted = [int(np.floor(d * s)) if d > 0 else -1 for d, s in zip(x_shape, scales)]
    else:
        wanted = [int(v) for v in sizes]
    if y_shape is not None and len(y_shape) == rank:
        wanted = [w if w >= 0 else y for w, y in zip(wanted, y_shape)]
    moved = [a for a in range(rank) if x_shape[a] != wanted[a] or (scales is not None and scales.size and scales[a] != 1)]
    if not moved or any(a < rank - 2 for a in moved) or any(x_shape[a] <= 0 or wanted[a] <= 0 for a in moved):
        return None
    p = f"{node.name}/equiv/"
    out: list[onnx.NodeProto] = []
    x = inputs[0]
    for a in sorted(moved, reverse=True):  # last axis first: X M_w', then M_h (.)
        scale = float(scales[a]) if scales is not None and scales.size else None
        try:
            m = axis_matrix(node, x_shape[a], wanted[a], scale, rank, a)
        except (ValueError, *onnxruntime_errors()):  # an attribute Resize 19 no longer takes (tf_half_pixel_for_nn)
            return None
        name = p + f"m{a}"
        if a == rank - 1:
            out.append(oh.make_node("Constant", [], [name], value=numpy_helper.from_array(m.T.copy(), name)))
            pair = [x, name]
        else:
            out.append(oh.make_node("Constant", [], [name], value=numpy_helper.from_array(m, name)))
            pair = [name, x]
        result = node.output[0] if a == min(moved) else p + f"r{a}"
        out.append(oh.make_node("MatMul", pair, [result], name=p + f"mm{a}"))
        x = result
    return out
