"""Activations, reductions and layout ops onnxruntime-training 1.19 has no gradient for, in ops that have one.

Each form is the op's definition in the ONNX spec (``|x| = Abs(x)``; ``[c]``: a Cast of a comparison
to float, through which no gradient flows, as none flows through the op's own threshold):

    Elu(x, a)          = Relu(x) + a (Exp(-Relu(-x)) - 1)
    Selu(x, a, g)      = g Elu(x, a)
    Celu(x, a)         = Relu(x) + a (Exp(-Relu(-x) / a) - 1)
    Softplus(x)        = Relu(x) + Log(1 + Exp(-|x|))        (no overflow for large x)
    Mish(x)            = x Tanh(Softplus(x))
    Softsign(x)        = x / (1 + |x|)
    ThresholdedRelu(x) = x [x > a]
    Shrink(x, b, l)    = (x - b) [x > l] + (x + b) [x < -l]
    Sinh, Cosh         = (Exp(x) -/+ Exp(-x)) / 2;   Tan = Sin / Cos
    Sum(x1..xn)        = x1 + ... + xn;   Mean = Sum / n
    ReduceSumSquare    = ReduceSum(x x);  ReduceL1 = ReduceSum(|x|);  ReduceLogSum = Log(ReduceSum(x))
    LpNormalization    = x / ReduceL2(x) (p 2) or x / ReduceSum(|x|) (p 1), over the axis
    InstanceNormalization(x, s, B) = (x - m) / Sqrt(v + eps) s + B,  m, v over the spatial axes
    GroupNormalization(x, s, B)    = the same over each group's channels and spatial axes (opset 21:
                                     s, B per channel; the deprecated GroupNormalization 18 is left alone)
    GlobalMaxPool      = MaxPool with the whole spatial extent as its kernel
    SpaceToDepth(x, b) = Reshape(x, [N, C, H/b, b, W/b, b]) -> Transpose(0, 3, 5, 1, 2, 4) -> Reshape([N, C b b, H/b, W/b])
    CumSum(x, axis)    = x U along the axis, U the (strictly, for exclusive) upper triangular ones (lower: reverse)
    Transpose(x)       = Transpose(x, perm = the axes reversed)   (its gradient reads perm)
    Einsum(A, B)       = Transpose -> Reshape [batch, kept, contracted] -> MatMul -> Reshape -> Transpose
                         (labels of one operand only summed first; no ellipsis or repeated label)

Where a form needs a length or a constant input it does not have, the node stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from onnx_dc.graph.walk import attributes
from onnx_dc.train.builder import NodeBuilder


def _builder(node: onnx.NodeProto) -> NodeBuilder:
    return NodeBuilder(f"{node.name or node.output[0]}/equiv/")


def _negative_part_exp(b: NodeBuilder, x: str, scale: float = 1.0) -> str:
    """``Exp(min(x, 0) / scale) - 1`` = ``Exp(-Relu(-x) / scale) - 1`` (zero for x >= 0)."""
    low = b.op("Neg", [b.op("Relu", [b.op("Neg", [x])])])
    if scale != 1.0:
        low = b.op("Div", [low, b.real(scale)])
    return b.op("Sub", [b.op("Exp", [low]), b.real(1.0)])


def _softplus(b: NodeBuilder, x: str) -> str:
    tail = b.op("Log", [b.op("Add", [b.real(1.0), b.op("Exp", [b.op("Neg", [b.op("Abs", [x])])])])])
    return b.op("Add", [b.op("Relu", [x]), tail])


def _indicator(b: NodeBuilder, comparison: str, x: str, threshold: float) -> str:
    return b.op("Cast", [b.op(comparison, [x, b.real(threshold)])], to=TensorProto.FLOAT)


def activation(node: onnx.NodeProto, known) -> list[onnx.NodeProto] | None:
    """The elementwise activations and math ops of the module's notes."""
    a, b, x, out = attributes(node), _builder(node), node.input[0], node.output[0]
    op = node.op_type
    if op in ("Elu", "Selu", "Celu"):
        alpha = float(a.get("alpha", {"Elu": 1.0, "Selu": 1.67326319217681884765625, "Celu": 1.0}[op]))
        neg = _negative_part_exp(b, x, alpha if op == "Celu" else 1.0)
        y = b.op("Add", [b.op("Relu", [x]), b.op("Mul", [neg, b.real(alpha)])], None if op == "Selu" else out)
        if op == "Selu":
            b.op("Mul", [y, b.real(float(a.get("gamma", 1.05070102214813232421875)))], out)
    elif op == "Softplus":
        b.op("Identity", [_softplus(b, x)], out)
    elif op == "Mish":
        b.op("Mul", [x, b.op("Tanh", [_softplus(b, x)])], out)
    elif op == "Softsign":
        b.op("Div", [x, b.op("Add", [b.real(1.0), b.op("Abs", [x])])], out)
    elif op == "ThresholdedRelu":
        b.op("Mul", [x, _indicator(b, "Greater", x, float(a.get("alpha", 1.0)))], out)
    elif op == "Shrink":
        bias, lambd = float(a.get("bias", 0.0)), float(a.get("lambd", 0.5))
        up = b.op("Mul", [b.op("Sub", [x, b.real(bias)]), _indicator(b, "Greater", x, lambd)])
        down = b.op("Mul", [b.op("Add", [x, b.real(bias)]), _indicator(b, "Less", x, -lambd)])
        b.op("Add", [up, down], out)
    elif op in ("Sinh", "Cosh"):
        pos, neg = b.op("Exp", [x]), b.op("Exp", [b.op("Neg", [x])])
        b.op("Mul", [b.op("Sub" if op == "Sinh" else "Add", [pos, neg]), b.real(0.5)], out)
    elif op == "Tan":
        b.op("Div", [b.op("Sin", [x]), b.op("Cos", [x])], out)
    elif op in ("Sum", "Mean"):
        total = b.add(*node.input)
        b.op("Mul", [total, b.real(1.0 / len(node.input))], out) if op == "Mean" else b.op("Identity", [total], out)
    else:
        return None
    return b.nodes


def _axes(node: onnx.NodeProto, known) -> list[int] | None:
    """A reduction's axes, from its attribute or its constant second input ([]: every axis); None: not known."""
    if len(node.input) > 1 and node.input[1]:
        value = known.consts.get(node.input[1])
        return None if value is None else [int(v) for v in np.ravel(value)]
    return [int(v) for v in attributes(node).get("axes", [])]


def _reduce(b: NodeBuilder, op: str, x: str, axes: list[int], keepdims: int, opset: int, out: str | None = None,
            noop: int = 0) -> str:
    """A reduction with its axes as opset ``opset`` wants them (an input from 18, ReduceSum's from 13)."""
    extra = {"noop_with_empty_axes": noop} if noop else {}
    if opset >= 18 or op == "ReduceSum":
        return b.op(op, [x, b.ints(axes)] if axes else [x], out, keepdims=keepdims, **extra)
    return b.op(op, [x], out, keepdims=keepdims, **({"axes": axes} if axes else {}))


def reduction(node: onnx.NodeProto, known) -> list[onnx.NodeProto] | None:
    """ReduceSumSquare, ReduceL1, ReduceLogSum as ReduceSum of x x, |x|, then Log."""
    axes = _axes(node, known)
    if axes is None:
        return None
    a, b, x = attributes(node), _builder(node), node.input[0]
    keep, noop = int(a.get("keepdims", 1)), int(a.get("noop_with_empty_axes", 0))
    if not axes and noop:
        b.op("Identity", [x], node.output[0])
        return b.nodes
    inner = {"ReduceSumSquare": lambda: b.op("Mul", [x, x]), "ReduceL1": lambda: b.op("Abs", [x]),
             "ReduceLogSum": lambda: x}[node.op_type]()
    if node.op_type == "ReduceLogSum":
        b.op("Log", [_reduce(b, "ReduceSum", inner, axes, keep, known.opset)], node.output[0])
    else:
        _reduce(b, "ReduceSum", inner, axes, keep, known.opset, node.output[0])
    return b.nodes


def _normalized(b: NodeBuilder, x: str, axes: list[int], eps: float, opset: int) -> str:
    """``(x - mean) / Sqrt(var + eps)`` over ``axes`` (biased variance, as the ops define it)."""
    centered = b.op("Sub", [x, _reduce(b, "ReduceMean", x, axes, 1, opset)])
    var = _reduce(b, "ReduceMean", b.op("Mul", [centered, centered]), axes, 1, opset)
    return b.op("Div", [centered, b.op("Sqrt", [b.op("Add", [var, b.real(eps)])])])


def normalization(node: onnx.NodeProto, known) -> list[onnx.NodeProto] | None:
    """InstanceNormalization, GroupNormalization, LpNormalization by their definitions."""
    a, b, x, out = attributes(node), _builder(node), node.input[0], node.output[0]
    shape = known.shapes.get(x)
    if shape is None or len(shape) < 2:
        return None
    rank = len(shape)
    if node.op_type == "LpNormalization":
        axis, p = int(a.get("axis", -1)) % rank, int(a.get("p", 2))
        if p == 2:
            norm = _reduce(b, "ReduceL2", x, [axis], 1, known.opset)
        else:
            norm = _reduce(b, "ReduceSum", b.op("Abs", [x]), [axis], 1, known.opset)
        b.op("Div", [x, norm], out)
        return b.nodes
    eps = float(a.get("epsilon", 1e-5))
    channel = b.ints([-1] + [1] * (rank - 2))
    if node.op_type == "InstanceNormalization":
        y = _normalized(b, x, list(range(2, rank)), eps, known.opset)
        scaled = b.op("Mul", [y, b.op("Reshape", [node.input[1], channel])])
        b.op("Add", [scaled, b.op("Reshape", [node.input[2], channel])], out)
        return b.nodes
    groups, channels = int(a["num_groups"]), shape[1]
    if channels <= 0 or channels % groups or known.opset < 21:  # GroupNormalization 18 is deprecated: left alone
        return None
    grouped = b.op("Reshape", [x, b.ints([0, groups, -1])])  # [N, G, C/G * spatial]
    y = _normalized(b, grouped, [2], eps, known.opset)
    y = b.op("Reshape", [y, b.op("Shape", [x])])
    scaled = b.op("Mul", [y, b.op("Reshape", [node.input[1], channel])])  # scale and bias per channel (opset 21)
    b.op("Add", [scaled, b.op("Reshape", [node.input[2], channel])], out)
    return b.nodes


def layout(node: onnx.NodeProto, known) -> list[onnx.NodeProto] | None:
    """GlobalMaxPool, SpaceToDepth, CumSum and Transpose without perm, as the module's notes write them."""
    a, b, x, out = attributes(node), _builder(node), node.input[0], node.output[0]
    shape = known.shapes.get(x)
    if shape is None:
        return None
    rank = len(shape)
    if node.op_type == "Transpose":
        if "perm" in a:
            return None
        b.op("Transpose", [x], out, perm=list(range(rank - 1, -1, -1)))
    elif node.op_type == "GlobalMaxPool":
        if rank < 3 or any(d <= 0 for d in shape[2:]):
            return None
        b.op("MaxPool", [x], out, kernel_shape=list(shape[2:]))
    elif node.op_type == "SpaceToDepth":
        size = int(a["blocksize"])
        if rank != 4 or any(d <= 0 for d in shape[1:]) or shape[2] % size or shape[3] % size:
            return None
        _, c, h, w = shape
        split = b.op("Reshape", [x, b.ints([0, c, h // size, size, w // size, size])])
        moved = b.op("Transpose", [split], perm=[0, 3, 5, 1, 2, 4])
        b.op("Reshape", [moved, b.ints([0, c * size * size, h // size, w // size])], out)
    elif node.op_type == "CumSum":
        axis = known.consts.get(node.input[1])
        if axis is None:
            return None
        axis = int(np.ravel(axis)[0]) % rank
        length = shape[axis]
        if length <= 0:
            return None
        i, j = np.indices((length, length))
        keep = (i >= j) if a.get("reverse", 0) else (i <= j)
        if a.get("exclusive", 0):
            keep &= i != j
        ones = b.array(keep.astype(np.float32))  # y[..., j] = sum_i x[..., i] U[i, j]
        if axis == rank - 1:
            b.op("MatMul", [x, ones], out)
        else:
            perm = [d for d in range(rank) if d != axis] + [axis]
            back = [perm.index(d) for d in range(rank)]
            last = b.op("Transpose", [x], perm=perm)
            b.op("Transpose", [b.op("MatMul", [last, ones])], out, perm=back)
    else:
        return None
    return b.nodes


def _einsum_labels(equation: str, count: int) -> tuple[list[str], str] | None:
    """The operands' labels and the output's; None for ellipses, a repeated label, or another operand count."""
    equation = equation.replace(" ", "")
    if "..." in equation:
        return None
    left, _, right = equation.partition("->")
    operands = left.split(",")
    if len(operands) != count or any(len(set(o)) != len(o) for o in operands):
        return None
    if not _:
        every = "".join(operands)
        right = "".join(sorted(c for c in set(every) if every.count(c) == 1))
    return operands, right


def einsum(node: onnx.NodeProto, known) -> list[onnx.NodeProto] | None:
    """Einsum of one or two operands as ReduceSum, Transpose, Reshape and a batched MatMul.

    Labels of one operand only and not in the output are summed first; then A is laid out as
    [batch, kept of A, 1, contracted], B as [batch, 1 per kept axis of A, contracted, kept of B], and one
    broadcasting MatMul contracts them (batch and A's kept axes may be dynamic: Reshape copies them;
    the contracted axes and B's kept axes need known lengths).
    """
    equation = attributes(node)["equation"]
    parsed = _einsum_labels(equation.decode() if isinstance(equation, bytes) else equation, len(node.input))
    if parsed is None or len(node.input) > 2:
        return None
    operands, out_labels = parsed
    shapes = [known.shapes.get(i) for i in node.input]
    if any(s is None or len(s) != len(o) for s, o in zip(shapes, operands)):
        return None
    b = _builder(node)
    tensors, dims = [], {}
    for k, (name, labels, shape) in enumerate(zip(node.input, operands, shapes)):
        others = "".join(o for j, o in enumerate(operands) if j != k) + out_labels
        alone = [i for i, c in enumerate(labels) if c not in others]
        if alone:
            name = _reduce(b, "ReduceSum", name, alone, 0, known.opset)
            labels = "".join(c for i, c in enumerate(labels) if i not in alone)
            shape = [d for i, d in enumerate(shape) if i not in alone]
        dims.update({c: d for c, d in zip(labels, shape) if d > 0 or c not in dims})
        tensors.append((name, labels))
    if len(tensors) == 1:
        name, labels = tensors[0]
        b.op("Transpose", [name], node.output[0], perm=[labels.index(c) for c in out_labels])
        return b.nodes
    (a, la), (c, lc) = tensors
    batch = [x for x in out_labels if x in la and x in lc]
    contracted = [x for x in la if x in lc and x not in out_labels]
    kept_a, kept_c = [x for x in la if x not in lc], [x for x in lc if x not in la]
    if any(dims.get(x, -1) <= 0 for x in contracted + kept_c):
        return None
    k = int(np.prod([dims[x] for x in contracted])) if contracted else 1
    r = int(np.prod([dims[x] for x in kept_c])) if kept_c else 1
    copied = [0] * (len(batch) + len(kept_a))  # Reshape copies these (they may be dynamic)
    left = b.op("Reshape", [b.op("Transpose", [a], perm=[la.index(x) for x in batch + kept_a + contracted]),
                            b.ints(copied + [1, k])])  # [batch, kept of A, 1, K]
    right = b.op("Reshape", [b.op("Transpose", [c], perm=[lc.index(x) for x in batch + contracted + kept_c]),
                             b.ints([0] * len(batch) + [1] * len(kept_a) + [k, r])])  # [batch, 1.., K, R]
    product = b.op("MatMul", [left, right])  # [batch, kept of A, 1, R]
    order = batch + kept_a + kept_c
    full = b.op("Reshape", [product, b.ints(copied + [dims[x] for x in kept_c])])
    b.op("Transpose", [full], node.output[0], perm=[order.index(x) for x in out_labels])
    return b.nodes
