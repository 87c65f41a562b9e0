"""Ops onnxruntime-training 1.19 cannot differentiate on CPU, rewritten in the training graph only.

Each rewrite is the op's definition in the ONNX spec, in ops that have CPU gradients:

    DepthToSpace(x, b), DCR:  Reshape(x, [N, b, b, C/b^2, H, W]) -> Transpose(0,3,4,1,5,2) -> Reshape([N, C/b^2, H b, W b])
                        CRD:  Reshape(x, [N, C/b^2, b, b, H, W]) -> Transpose(0,1,4,2,5,3) -> Reshape(same)
    PRelu(x, s)            =  Relu(x) - s * Relu(-x)
    HardSigmoid(x)         =  max(0, min(1, a x + b)) = Relu(y) - Relu(y - 1),  y = a x + b
    HardSwish(x)           =  x * HardSigmoid(x) with a = 1/6, b = 1/2
    BatchNormalization(x, scale, B, mean, var) = x * a + b,  a = scale / sqrt(var + eps),  b = B - mean * a
        (onnxruntime-training would train it in training mode, on batch statistics: with one
        sample per call those differ from the model's, and so do the gradients)
    Resize(x, scales=[1, 1, sh, sw]), nearest, asymmetric, floor, whole sh and sw:
                           y[n, c, i, j] = x[n, c, floor(i / sh), floor(j / sw)]
                           =  Reshape(Expand(Reshape(x, [N, C, H, 1, W, 1]), [1, 1, 1, sh, 1, sw]), [N, C, H sh, W sw])
    Resize, any other (linear, cubic, fractional factors, ...), lengths known: M_h X M_w' (onnx_dc/train/resize.py)
    ConvTranspose(x, W, B), strides s, pads p, dilations d, group g, kernel k, output_padding o:
                           =  Conv(Pad(Z_s(x), b, e), W', B), stride 1, dilations d, group g
        Z_s puts s - 1 zeros after every input element along each axis (Reshape -> Pad -> Reshape),
        b = d (k - 1) - p_begin,  e = d (k - 1) - p_end + o - (s - 1)   (both >= 0, else not rewritten),
        W'[g, o', i] = W[g, i, o'] per group, every kernel axis reversed (Reshape -> Transpose -> Reshape -> Gather)
    LSTM / GRU / RNN with a known sequence length: unrolled step by step (onnx_dc/train/recurrent.py); else
    GRU / LSTM, direction bidirectional (onnxruntime-training trains the forward direction only):
                           =  the forward RNN on x with direction 0's parameters, beside the forward RNN on
                              x reversed in time with direction 1's, its Y reversed back;
                              Y = Concat(axis 1), Y_h (and LSTM's Y_c) = Concat(axis 0)
    Elu, Selu, Celu, Softplus, Mish, Softsign, ThresholdedRelu, Shrink, Sinh, Cosh, Tan, Sum, Mean,
    ReduceSumSquare, ReduceL1, ReduceLogSum, LpNormalization, InstanceNormalization, GroupNormalization,
    GlobalMaxPool, SpaceToDepth, CumSum, Transpose without perm, Einsum: onnx_dc/train/elementwise.py
    LayerNormalization with one output: the same node with its Mean and InvStdDev outputs named
                           (onnxruntime-training's gradient reads them; PyTorch exports leave them out)

A node is rewritten only where its shapes are known (C, H, W static); otherwise it stays
and the gradient builder names it. Parameters keep their names, so trained values return
to the unchanged inference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.graph import ops
from onnx_dc.graph.walk import attributes
from onnx_dc.train.elementwise import activation, einsum, layout, normalization, reduction
from onnx_dc.train.recurrent import trains_as_it_is, unrolled
from onnx_dc.train.resize import resize_as_matmul


@dataclass(frozen=True)
class Known:
    """What the rewrites may read of the graph: static shapes, constant inputs, the ai.onnx opset."""

    shapes: dict[str, list[int]]
    consts: dict[str, np.ndarray]
    opset: int = 17  # the model's ai.onnx opset (the form of a reduction's axes)


def _depth_to_space(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """DepthToSpace as Reshape -> Transpose -> Reshape (its definition in the ONNX spec)."""
    shape = known.shapes.get(node.input[0])
    if shape is None or len(shape) != 4 or any(d <= 0 for d in shape[1:]):
        return None
    attrs = attributes(node)
    b = int(attrs["blocksize"])
    mode = attrs.get("mode", b"DCR")
    _, c, h, w = shape
    if mode in (b"CRD", "CRD"):
        split, perm = [0, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    else:
        split, perm = [0, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    p = f"{node.name}/equiv/"
    return [
        oh.make_node("Constant", [], [p + "split"], value=oh.make_tensor(p + "split", TensorProto.INT64, [6], split)),
        oh.make_node("Reshape", [node.input[0], p + "split"], [p + "r"], name=p + "r"),
        oh.make_node("Transpose", [p + "r"], [p + "t"], name=p + "t", perm=perm),
        oh.make_node("Constant", [], [p + "shape"],
                     value=oh.make_tensor(p + "shape", TensorProto.INT64, [4], [0, c // (b * b), h * b, w * b])),
        oh.make_node("Reshape", [p + "t", p + "shape"], list(node.output), name=p + "out"),
    ]


def _prelu(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto]:
    """PRelu(x, s) = Relu(x) - s * Relu(-x)."""
    x, slope = node.input
    p = f"{node.name}/equiv/"
    return [
        oh.make_node("Relu", [x], [p + "pos"], name=p + "pos"),
        oh.make_node("Neg", [x], [p + "neg"], name=p + "neg"),
        oh.make_node("Relu", [p + "neg"], [p + "negpart"], name=p + "negpart"),
        oh.make_node("Mul", [p + "negpart", slope], [p + "scaled"], name=p + "scaled"),
        oh.make_node("Sub", [p + "pos", p + "scaled"], list(node.output), name=p + "out"),
    ]


def _clamped(node: onnx.NodeProto, x: str, alpha: float, beta: float, out: str) -> list[onnx.NodeProto]:
    """``out = max(0, min(1, alpha x + beta)) = Relu(y) - Relu(y - 1)`` with ``y = alpha x + beta``."""
    p = f"{node.name}/equiv/"

    def const(name: str, value: float) -> onnx.NodeProto:
        return oh.make_node("Constant", [], [p + name], value=oh.make_tensor(p + name, TensorProto.FLOAT, [], [value]))

    return [
        const("alpha", alpha), const("beta", beta), const("one", 1.0),
        oh.make_node("Mul", [x, p + "alpha"], [p + "ax"], name=p + "ax"),
        oh.make_node("Add", [p + "ax", p + "beta"], [p + "y"], name=p + "y"),
        oh.make_node("Relu", [p + "y"], [p + "low"], name=p + "low"),
        oh.make_node("Sub", [p + "y", p + "one"], [p + "y1"], name=p + "y1"),
        oh.make_node("Relu", [p + "y1"], [p + "high"], name=p + "high"),
        oh.make_node("Sub", [p + "low", p + "high"], [out], name=p + "out"),
    ]


def _hard_sigmoid(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto]:
    """HardSigmoid(x) = max(0, min(1, alpha x + beta)) = Relu(y) - Relu(y - 1), alpha 0.2 and beta 0.5 by default."""
    attrs = attributes(node)
    return _clamped(node, node.input[0], float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)), node.output[0])


def _hard_swish(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto]:
    """HardSwish(x) = x * HardSigmoid(x) with alpha 1/6, beta 0.5 (the ONNX definition)."""
    p = f"{node.name}/equiv/"
    return [*_clamped(node, node.input[0], 1.0 / 6.0, 0.5, p + "gate"),
            oh.make_node("Mul", [node.input[0], p + "gate"], list(node.output), name=p + "swish")]


def _resize_nearest(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """Nearest Resize by whole factors (asymmetric, floor) repeats each pixel: Reshape -> Expand -> Reshape."""
    attrs = attributes(node)
    if (attrs.get("mode") != b"nearest" or attrs.get("coordinate_transformation_mode") != b"asymmetric"
            or attrs.get("nearest_mode", b"round_prefer_floor") != b"floor" or len(node.input) != 3):
        return None
    shape, scales = known.shapes.get(node.input[0]), known.consts.get(node.input[2])
    if shape is None or len(shape) != 4 or any(d <= 0 for d in shape[1:]) or scales is None or scales.shape != (4,):
        return None
    if not (np.all(scales == np.round(scales)) and scales[0] == 1 and scales[1] == 1):
        return None
    _, c, h, w = shape
    sh, sw = int(scales[2]), int(scales[3])
    p = f"{node.name}/equiv/"

    def ints(tag: str, values: list[int]) -> onnx.NodeProto:
        return oh.make_node("Constant", [], [p + tag], value=oh.make_tensor(p + tag, TensorProto.INT64, [len(values)], values))

    return [
        ints("split", [0, c, h, 1, w, 1]),
        oh.make_node("Reshape", [node.input[0], p + "split"], [p + "r"], name=p + "r"),
        ints("reps", [1, 1, 1, sh, 1, sw]),
        oh.make_node("Expand", [p + "r", p + "reps"], [p + "e"], name=p + "e"),
        ints("shape", [0, c, h * sh, w * sw]),
        oh.make_node("Reshape", [p + "e", p + "shape"], list(node.output), name=p + "out"),
    ]


def _resize(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """Nearest Resize by whole factors as repetition; any other Resize as matrix products (onnx_dc/train/resize.py)."""
    return _resize_nearest(node, known) or resize_as_matmul(node, known.shapes, known.consts)


def _batch_norm(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """Inference-mode BatchNormalization as x * a + b, a = scale / sqrt(var + eps), b = B - mean * a."""
    attrs = attributes(node)
    arrays = [known.consts.get(i) for i in node.input[1:5]]
    rank = len(known.shapes.get(node.input[0], []))
    if attrs.get("training_mode", 0) or len(node.output) != 1 or any(a is None for a in arrays) or rank < 2:
        return None
    scale, bias, mean, var = (a.astype(np.float64) for a in arrays)
    a = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    b = bias - mean * a
    shape = (-1,) + (1,) * (rank - 2)
    p = f"{node.name}/equiv/"
    return [
        oh.make_node("Constant", [], [p + "a"], value=numpy_helper.from_array(a.astype(np.float32).reshape(shape), p + "a")),
        oh.make_node("Constant", [], [p + "b"], value=numpy_helper.from_array(b.astype(np.float32).reshape(shape), p + "b")),
        oh.make_node("Mul", [node.input[0], p + "a"], [p + "ax"], name=p + "ax"),
        oh.make_node("Add", [p + "ax", p + "b"], list(node.output), name=p + "out"),
    ]


def _conv_transpose(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """ConvTranspose as zero insertion, Pad and a Conv with the flipped, per-group transposed kernel."""
    attrs = attributes(node)
    x_shape, w_shape = known.shapes.get(node.input[0]), known.shapes.get(node.input[1])
    if (x_shape is None or w_shape is None or len(x_shape) < 3 or len(w_shape) != len(x_shape)
            or any(d <= 0 for d in x_shape[1:]) or any(d <= 0 for d in w_shape)
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attrs):
        return None
    n = len(x_shape) - 2
    kernel = list(w_shape[2:])
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * (2 * n)))
    extra = list(attrs.get("output_padding", [0] * n))
    g = int(attrs.get("group", 1))
    c_in, c_out_g = w_shape[0], w_shape[1]
    begin = [d * (k - 1) - pads[a] for a, (d, k) in enumerate(zip(dilations, kernel))]
    end = [d * (k - 1) - pads[n + a] + extra[a] - (s - 1) for a, (d, k, s) in enumerate(zip(dilations, kernel, strides))]
    if min(begin + end) < 0 or c_in % g:
        return None
    p = f"{node.name}/equiv/"
    out: list[onnx.NodeProto] = []

    def ints(tag: str, values: list[int]) -> str:
        out.append(oh.make_node("Constant", [], [p + tag], value=oh.make_tensor(p + tag, TensorProto.INT64, [len(values)], values)))
        return p + tag

    x, shape = node.input[0], [0] + list(x_shape[1:])  # 0: Reshape copies the (maybe dynamic) batch
    for a, s in enumerate(strides):
        if s == 1:
            continue
        axis = 2 + a
        split = shape[: axis + 1] + [1] + shape[axis + 1 :]
        pad = [0] * (2 * len(split))
        pad[len(split) + axis + 1] = s - 1
        out.append(oh.make_node("Reshape", [x, ints(f"split{a}", split)], [p + f"u{a}"], name=p + f"u{a}"))
        out.append(oh.make_node("Pad", [p + f"u{a}", ints(f"zeros{a}", pad)], [p + f"z{a}"], name=p + f"z{a}"))
        shape = shape[:axis] + [shape[axis] * s] + shape[axis + 1 :]
        out.append(oh.make_node("Reshape", [p + f"z{a}", ints(f"merge{a}", shape)], [p + f"s{a}"], name=p + f"s{a}"))
        x = p + f"s{a}"
    if any(begin + end):
        out.append(oh.make_node("Pad", [x, ints("pads", [0, 0] + begin + [0, 0] + end)], [p + "padded"], name=p + "padded"))
        x = p + "padded"
    w = node.input[1]
    out.append(oh.make_node("Reshape", [w, ints("wsplit", [g, c_in // g, c_out_g] + kernel)], [p + "w5"], name=p + "w5"))
    perm = [0, 2, 1] + list(range(3, 3 + n))
    out.append(oh.make_node("Transpose", [p + "w5"], [p + "wt"], name=p + "wt", perm=perm))
    out.append(oh.make_node("Reshape", [p + "wt", ints("wshape", [g * c_out_g, c_in // g] + kernel)], [p + "w0"],
                            name=p + "w0"))
    w = p + "w0"
    for a, k in enumerate(kernel):
        if k > 1:
            out.append(oh.make_node("Gather", [w, ints(f"rev{a}", list(range(k - 1, -1, -1)))], [p + f"w{a + 1}"],
                                    name=p + f"flip{a}", axis=2 + a))
            w = p + f"w{a + 1}"
    out.append(oh.make_node("Conv", [x, w, *node.input[2:3]], list(node.output), name=p + "conv", group=g,
                            dilations=dilations, kernel_shape=kernel, strides=[1] * n, pads=[0] * (2 * n)))
    return out


# per-direction inputs of GRU / LSTM (W, R, B, initial_h, initial_c, P): axis 0 is the direction
_RNN_PER_DIRECTION = (1, 2, 3, 5, 6, 7)


def _bidirectional_rnn(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """A bidirectional GRU / LSTM as two forward ones, the second on the time-reversed sequence."""
    attrs = {a.name: a for a in node.attribute}
    direction = oh.get_attribute_value(attrs["direction"]) if "direction" in attrs else b"forward"
    x_shape = known.shapes.get(node.input[0])
    if (direction not in (b"bidirectional", "bidirectional") or x_shape is None or not x_shape or x_shape[0] <= 0
            or (len(node.input) > 4 and node.input[4]) or ("layout" in attrs and oh.get_attribute_value(attrs["layout"]))):
        return None
    p = f"{node.name}/equiv/"
    steps = x_shape[0]
    out = [oh.make_node("Constant", [], [p + "rev"], value=oh.make_tensor(p + "rev", TensorProto.INT64, [steps],
                                                                          list(range(steps - 1, -1, -1))))]
    out.append(oh.make_node("Gather", [node.input[0], p + "rev"], [p + "x_rev"], name=p + "x_rev", axis=0))
    results = []
    for d, tag in ((0, "fw"), (1, "bw")):
        out.append(oh.make_node("Constant", [], [p + f"d{d}"], value=oh.make_tensor(p + f"d{d}", TensorProto.INT64, [1], [d])))
        inputs = [p + "x_rev" if d else node.input[0]]
        for i in range(1, len(node.input)):
            name = node.input[i]
            if i in _RNN_PER_DIRECTION and name:
                out.append(oh.make_node("Gather", [name, p + f"d{d}"], [p + f"{tag}_in{i}"], name=p + f"{tag}_in{i}", axis=0))
                name = p + f"{tag}_in{i}"
            inputs.append(name)
        rnn = oh.make_node(node.op_type, inputs, [p + f"{tag}_out{j}" if o else "" for j, o in enumerate(node.output)],
                           name=p + tag, direction="forward")
        for a in node.attribute:
            if a.name in ("activations", "activation_alpha", "activation_beta"):
                values = list(oh.get_attribute_value(a))
                half = len(values) // 2
                rnn.attribute.append(oh.make_attribute(a.name, values[d * half : (d + 1) * half]))
            elif a.name != "direction":
                rnn.attribute.append(a)
        out.append(rnn)
        results.append(rnn.output)
    for j, name in enumerate(node.output):
        if not name:
            continue
        fw, bw = results[0][j], results[1][j]
        if j == 0:  # Y [steps, directions, batch, hidden]: the backward pass's steps back in order
            out.append(oh.make_node("Gather", [bw, p + "rev"], [p + "bw_y"], name=p + "bw_y", axis=0))
            bw = p + "bw_y"
        out.append(oh.make_node("Concat", [fw, bw], [name], name=p + f"out{j}", axis=1 if j == 0 else 0))
    return out


def _recurrent(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """A GRU onnxruntime-training trains (default activations, no clip, time first) stays, a bidirectional one
    split in two; other GRUs, every LSTM (its LSTMGrad fails on models as exported) and RNN (no gradient)
    are unrolled where the sequence length is known, else split where bidirectional."""
    if trains_as_it_is(node):
        return _bidirectional_rnn(node, known)  # unrolling gtcrn's GRUs made its training graph 14x slower to build
    return unrolled(node, known.shapes) or _bidirectional_rnn(node, known)


def _layer_norm(node: onnx.NodeProto, known: Known) -> list[onnx.NodeProto] | None:
    """LayerNormalization with its optional Mean and InvStdDev outputs named: its gradient reads them."""
    if len(node.output) >= 3 and all(node.output[:3]):
        return None
    out = onnx.NodeProto()
    out.CopyFrom(node)
    p = f"{node.name}/equiv/"
    names = list(node.output) + [""] * (3 - len(node.output))
    del out.output[:]
    out.output.extend([names[0], names[1] or p + "mean", names[2] or p + "inv_std_dev"])
    return [out]


# The op table's equivalent names -> rewrites. The ops onnxruntime-training 1.19 has no CPU
# gradient for (or, BatchNormalization, trains in training mode: batch statistics), written with
# ops that have one; which op takes which rewrite is the table's ``equivalent`` field.
REWRITES = {"activation": activation, "reduction": reduction, "normalization": normalization, "layout": layout,
            "einsum": einsum,
            "depth_to_space": _depth_to_space, "prelu": _prelu, "hard_sigmoid": _hard_sigmoid,
            "hard_swish": _hard_swish, "resize": _resize,
            "batch_norm": _batch_norm, "conv_transpose": _conv_transpose, "recurrent": _recurrent,
            "layer_norm": _layer_norm}


def _rewrite_of(node: onnx.NodeProto):
    spec = ops.of(node)
    return REWRITES[spec.equivalent] if spec is not None and spec.equivalent is not None else None


def differentiable_equivalents(model: onnx.ModelProto) -> int:
    """Replace, in place, nodes without a gradient in onnxruntime-training by equal compositions; returns how many.

    Only the training graph is rewritten: parameters keep their names, so they return
    to the unchanged inference model.
    """
    graph = model.graph
    # shape inference is the cost here: skip it where no node can be rewritten (a Transpose with its perm,
    # in nearly every model, never is)
    if not any(_rewrite_of(n) is not None and not (n.op_type == "Transpose" and n.attribute) for n in graph.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    wanted = {i for n in graph.node if n.op_type == "Resize" for i in n.input[1:4]}  # roi, scales, sizes
    wanted |= {i for n in graph.node if n.op_type == "BatchNormalization" for i in n.input[1:5]}
    wanted |= {n.input[1] for n in graph.node if len(n.input) > 1 and ops.of(n) is not None
               and ops.of(n).equivalent in ("reduction", "layout")}  # a reduction's axes, CumSum's axis
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in wanted}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.output[0] in wanted and n.attribute and n.attribute[0].name == "value"})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    known = Known(shapes, consts, opset)
    nodes, count = [], 0
    for node in graph.node:
        rewrite = _rewrite_of(node)
        replacement = rewrite(node, known) if rewrite else None
        if replacement is None:
            nodes.append(node)
        else:
            nodes.extend(replacement)
            count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count
