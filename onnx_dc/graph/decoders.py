"""The model-local ONNX functions that rebuild compressed weights (domain ``onnx_dc``).

These are the "layer plugin" of a ``*.dc.onnx`` file, written with standard ops only so
that stock onnxruntime runs the file and folds every decoder into a dense constant at
session creation. onnxruntime keeps every folded intermediate until the folding pass
ends, so each body is specialised to its widths (the op name carries them, see
onnx_dc/graph/layout.py) and works in the narrowest integer type. Symbol ``i`` of width
``b`` is bits ``[i b, i b + b)`` of the little-endian stream (docs/DCONNX.md):

    b = 8:        sym = bytes
    b in 1, 2, 4: sym[j*(8/b) + k] = (bytes[j] << (8 - b - k b)) >> (8 - b)           (uint8)
    other b:      groups of 8 symbols fill b bytes: B = int32(reshape(pad(bytes), [G, b])), and
                  with q_k = (k b) div 8, s_k = (k b) mod 8,
                  win_k = B[:, q_k] + 256 B[:, q_k+1] [+ 65536 B[:, q_k+2] when b > 9]
                  sym[g*8 + k] = (win_k div 2**s_k) mod 2**b                         (int32)
                  (column indices past the group are clamped: those bits are shifted out)
    DecodeDense:        W = codebook[reshape(sym_codes, shape)]
    DecodeSparse:       pos = cumsum(int32(sym_gaps) + 1) - 1
                        W = reshape(scatter(zeros(numel), pos, codebook[sym_codes]), shape)
    DecodeSparseValues: the same with the float32 ``values`` in place of codebook[codes]

BitShift runs on uint8 only (onnxruntime has no uint16 kernel, nor Add on unsigned
types), the other widths use int32 Mul / Div / Mod: every body is valid from opset 13 on
(a function must use the model's own opset), with no BitwiseAnd (opset 18) needed.
Positions are int32: a weight has fewer than 2**31 elements.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.graph import layout

MIN_OPSET = 13
MAX_NUMEL = 2**31 - 1
BYTE_ALIGNED = (1, 2, 4, 8)  # widths unpacked in uint8


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _ref(out: str, attr: str, kind: str) -> onnx.NodeProto:
    """Constant whose value is the calling node's attribute ``attr`` (an attribute reference)."""
    attr_type = {"int": AttributeProto.INT, "ints": AttributeProto.INTS}[kind]
    node = oh.make_node("Constant", [], [out])
    node.attribute.append(oh.make_attribute_ref(f"value_{kind}", attr_type, ref_attr_name=attr))
    return node


def _count_nodes(p: str) -> list[onnx.NodeProto]:
    """``{p}cnt`` = [count] (int64, 1-D), from the node's ``count`` attribute."""
    return [_ref(f"{p}c", "count", "int"), _const(f"{p}one", np.array([1], np.int64)),
            oh.make_node("Reshape", [f"{p}c", f"{p}one"], [f"{p}cnt"])]


def _unpack_nibbles(packed: str, bits: int, out: str, p: str) -> list[onnx.NodeProto]:
    per = 8 // bits
    left = np.array([8 - bits - k * bits for k in range(per)], np.uint8)
    return [
        *_count_nodes(p),
        _const(f"{p}ax", np.array([1], np.int64)),
        oh.make_node("Unsqueeze", [packed, f"{p}ax"], [f"{p}u"]),
        _const(f"{p}l", left),
        _const(f"{p}r", np.array(8 - bits, np.uint8)),
        oh.make_node("BitShift", [f"{p}u", f"{p}l"], [f"{p}sl"], direction="LEFT"),
        oh.make_node("BitShift", [f"{p}sl", f"{p}r"], [f"{p}sr"], direction="RIGHT"),
        _const(f"{p}flat", np.array([-1], np.int64)),
        oh.make_node("Reshape", [f"{p}sr", f"{p}flat"], [f"{p}f"]),
        _const(f"{p}z", np.array([0], np.int64)),
        oh.make_node("Slice", [f"{p}f", f"{p}z", f"{p}cnt"], [out]),
    ]


def _unpack_groups(packed: str, bits: int, out: str, p: str) -> list[onnx.NodeProto]:
    k = np.arange(8) * bits
    q, s = k // 8, k % 8
    spans = 2 if bits <= 9 else 3  # bytes a symbol can touch: s + bits <= 7 + bits
    nodes = [
        *_count_nodes(p),
        # G = ceil(count / 8) groups of ``bits`` bytes; the packed stream is shorter by < bits bytes.
        _const(f"{p}7", np.array([7], np.int64)),
        _const(f"{p}8", np.array([8], np.int64)),
        _const(f"{p}b", np.array([bits], np.int64)),
        oh.make_node("Add", [f"{p}cnt", f"{p}7"], [f"{p}c7"]),
        oh.make_node("Div", [f"{p}c7", f"{p}8"], [f"{p}g"]),
        oh.make_node("Mul", [f"{p}g", f"{p}b"], [f"{p}gb"]),
        oh.make_node("Shape", [packed], [f"{p}n"]),
        oh.make_node("Sub", [f"{p}gb", f"{p}n"], [f"{p}pad"]),
        oh.make_node("ConstantOfShape", [f"{p}pad"], [f"{p}zp"],
                     value=oh.make_tensor("v", TensorProto.UINT8, [1], [0])),
        oh.make_node("Concat", [packed, f"{p}zp"], [f"{p}full"], axis=0),
        oh.make_node("Concat", [f"{p}g", f"{p}b"], [f"{p}gs"], axis=0),
        oh.make_node("Reshape", [f"{p}full", f"{p}gs"], [f"{p}grp"]),
        oh.make_node("Cast", [f"{p}grp"], [f"{p}w"], to=TensorProto.INT32),
    ]
    acc = None
    for j in range(spans):
        cols = np.minimum(q + j, bits - 1).astype(np.int64)  # bytes past the group only feed bits dropped below
        nodes += [_const(f"{p}q{j}", cols), oh.make_node("Gather", [f"{p}w", f"{p}q{j}"], [f"{p}v{j}"], axis=1)]
        term = f"{p}v{j}"
        if j:
            nodes += [_const(f"{p}m{j}", np.array(1 << (8 * j), np.int32)),
                      oh.make_node("Mul", [term, f"{p}m{j}"], [f"{p}h{j}"])]
            term = f"{p}h{j}"
            nodes.append(oh.make_node("Add", [acc, term], [f"{p}a{j}"]))
            term = f"{p}a{j}"
        acc = term
    nodes += [
        _const(f"{p}d", (1 << s).astype(np.int32)),
        _const(f"{p}md", np.array(1 << bits, np.int32)),
        oh.make_node("Div", [acc, f"{p}d"], [f"{p}sh"]),
        oh.make_node("Mod", [f"{p}sh", f"{p}md"], [f"{p}sym"]),
        _const(f"{p}flat", np.array([-1], np.int64)),
        oh.make_node("Reshape", [f"{p}sym", f"{p}flat"], [f"{p}f"]),
        _const(f"{p}z", np.array([0], np.int64)),
        oh.make_node("Slice", [f"{p}f", f"{p}z", f"{p}cnt"], [out]),
    ]
    return nodes


def unpack_nodes(packed: str, bits: int, out: str, p: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing the ``count`` symbols of width ``bits`` in uint8 ``packed`` (uint8 or int32), and their name.

    No Identity is used for a no-op: a folded Identity is one more copy of the stream.
    """
    if bits == 8:
        return [], packed
    if bits in BYTE_ALIGNED:
        return _unpack_nibbles(packed, bits, out, p), out
    return _unpack_groups(packed, bits, out, p), out


def _as_int32(name: str, bits: int, out: str) -> tuple[list[onnx.NodeProto], str]:
    """int32(name) and its name; the unpacked symbols are uint8 only at the byte-aligned widths."""
    if bits in BYTE_ALIGNED:
        return [oh.make_node("Cast", [name], [out], to=TensorProto.INT32)], out
    return [], name


def _lookup(codes: str, bits: int, out: str, shaped: bool) -> list[onnx.NodeProto]:
    """``out`` = codebook[codes], reshaped to the weight's shape first when ``shaped`` (in the narrow type)."""
    nodes = []
    if shaped:
        nodes += [_ref("shape", "shape", "ints"), oh.make_node("Reshape", [codes, "shape"], ["cs"])]
        codes = "cs"
    cast, index = _as_int32(codes, bits, "ci")
    return nodes + cast + [oh.make_node("Gather", ["codebook", index], [out], axis=0)]


def _scatter(gaps: str, values: str, index_bits: int) -> list[onnx.NodeProto]:
    cast, gaps32 = _as_int32(gaps, index_bits, "g32")
    return [
        *cast,
        _const("one32", np.array(1, np.int32)),
        _const("ax0", np.array(0, np.int32)),
        oh.make_node("Add", [gaps32, "one32"], ["steps"]),
        oh.make_node("CumSum", ["steps", "ax0"], ["pos1"]),
        oh.make_node("Sub", ["pos1", "one32"], ["pos"]),
        _ref("numel", "numel", "int"),
        _const("one64", np.array([1], np.int64)),
        oh.make_node("Reshape", ["numel", "one64"], ["numel1"]),
        oh.make_node("ConstantOfShape", ["numel1"], ["zeros"],
                     value=oh.make_tensor("z", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("ScatterElements", ["zeros", "pos", values], ["flat"], axis=0),
        _ref("shape", "shape", "ints"),
        oh.make_node("Reshape", ["flat", "shape"], ["W"]),
    ]


def make_function(op_type: str, opset: int) -> FunctionProto:
    """The decoder function named ``op_type`` (see :func:`onnx_dc.graph.layout.op_type`) at ai.onnx ``opset``."""
    kind, *widths = op_type.split("_")
    bits = {w[0]: int(w[1:]) for w in widths}
    body = []
    if kind != layout.SPARSE_VALUES:
        nodes, codes = unpack_nodes("codes", bits["c"], "codes_u", "k")
        body += nodes + _lookup(codes, bits["c"], "W" if kind == layout.DENSE else "vals", shaped=kind == layout.DENSE)
    if kind != layout.DENSE:
        nodes, gaps = unpack_nodes("gaps", bits["i"], "gaps_u", "g")
        body += nodes + _scatter(gaps, "vals" if kind == layout.SPARSE else "values", bits["i"])
    attrs = list(layout.ATTRIBUTES)
    return oh.make_function(layout.DOMAIN, op_type, list(layout.INPUTS[kind]), ["W"], body,
                            [oh.make_opsetid("", opset)], attrs)


def make_functions(opset: int, op_types: set[str] | list[str]) -> list[FunctionProto]:
    """The decoder functions for the given op types, sorted by name (same input, same bytes)."""
    return [make_function(op, opset) for op in sorted(set(op_types))]
