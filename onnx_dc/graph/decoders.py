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
    ``_s`` (channel scales, ``scale`` float16 in W's rank):
                        DecodeDense:  W = W * Cast(scale, float32)   (broadcast)
                        DecodeSparse: the kept values times Cast(scale, float32).flat[(pos div scale_stride) mod C]
                                      before the scatter, so no second weight-sized tensor is folded
    ``_r`` (a codebook per group of rows): the lookup reads codebook[code + group_size * ((pos div group_stride)
                        mod channels) div group_rows] (the offset times min(code + 1 - reserves_zero, 1), so a
                        reserved zero stays 0), pos = Range(numel) for DecodeDense, the entries' positions otherwise

The generic functions (``DecodeSparse_g``, for weights of at most layout.GENERIC_MAX_NUMEL
elements) read the widths b from the node's ``code_bits`` / ``index_bits`` and unpack any b in 1..16:

    bits[8 j + k] = (bytes[j] << (7 - k)) >> 7                                  (uint8, bit k of byte j)
    sym = int32(reshape(bits[:count b], [count, b])) @ [1, 2, 4, ..., 2**(b-1)]    (int32 MatMul)

BitShift runs on uint8 only (onnxruntime has no uint16 kernel, nor Add on unsigned
types), the other widths use int32 Mul / Div / Mod: every body is valid from opset 13 on
(a function must use the model's own opset), with no BitwiseAnd (opset 18) needed.
Positions are int32: a weight has fewer than 2**31 elements. Bodies are stored compactly
(:func:`compact`): values renamed to short names, Constant tensors unnamed.
"""

from __future__ import annotations

import itertools
import string

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
    return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


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
                     value=oh.make_tensor("", TensorProto.UINT8, [1], [0])),
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


def _unpack_generic(packed: str, attr: str, out: str, p: str) -> list[onnx.NodeProto]:
    """Nodes computing ``out`` = the ``count`` int32 symbols in ``packed``, of the width in attribute ``attr``."""
    return [
        *_count_nodes(p),
        _ref(f"{p}w", attr, "int"),
        oh.make_node("Reshape", [f"{p}w", f"{p}one"], [f"{p}b"]),
        _const(f"{p}ax", np.array([1], np.int64)),
        oh.make_node("Unsqueeze", [packed, f"{p}ax"], [f"{p}u"]),
        _const(f"{p}l", np.arange(7, -1, -1, dtype=np.uint8)),
        _const(f"{p}r", np.array(7, np.uint8)),
        oh.make_node("BitShift", [f"{p}u", f"{p}l"], [f"{p}sl"], direction="LEFT"),
        oh.make_node("BitShift", [f"{p}sl", f"{p}r"], [f"{p}bits"], direction="RIGHT"),
        _const(f"{p}flat", np.array([-1], np.int64)),
        oh.make_node("Reshape", [f"{p}bits", f"{p}flat"], [f"{p}f"]),
        oh.make_node("Mul", [f"{p}cnt", f"{p}b"], [f"{p}nb"]),
        _const(f"{p}z", np.array([0], np.int64)),
        oh.make_node("Slice", [f"{p}f", f"{p}z", f"{p}nb"], [f"{p}used"]),
        oh.make_node("Concat", [f"{p}cnt", f"{p}b"], [f"{p}mshape"], axis=0),
        oh.make_node("Reshape", [f"{p}used", f"{p}mshape"], [f"{p}m"]),
        oh.make_node("Cast", [f"{p}m"], [f"{p}m32"], to=TensorProto.INT32),
        _const(f"{p}pow", (1 << np.arange(16)).astype(np.int32)),
        oh.make_node("Slice", [f"{p}pow", f"{p}z", f"{p}b"], [f"{p}pw"]),
        oh.make_node("MatMul", [f"{p}m32", f"{p}pw"], [out]),
    ]


def _as_int32(name: str, bits: int | None, out: str) -> tuple[list[onnx.NodeProto], str]:
    """int32(name) and its name; the unpacked symbols are uint8 only at the byte-aligned widths (None: generic)."""
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


def _scaled_values(values: str) -> tuple[list[onnx.NodeProto], str]:
    """``values * float32(scale)[(pos div scale_stride) mod C]``: the kept values times their channel's scale,
    before the scatter (count-sized intermediates, not weight-sized ones)."""
    return [
        _ref("st", "scale_stride", "int"),
        oh.make_node("Cast", ["st"], ["st32"], to=TensorProto.INT32),
        oh.make_node("Div", ["pos", "st32"], ["pd"]),
        oh.make_node("Size", [layout.SCALE], ["sc"]),
        oh.make_node("Cast", ["sc"], ["sc32"], to=TensorProto.INT32),
        oh.make_node("Mod", ["pd", "sc32"], ["ch"]),
        _const("flat1", np.array([-1], np.int64)),
        oh.make_node("Reshape", [layout.SCALE, "flat1"], ["sv"]),
        oh.make_node("Cast", ["sv"], ["svf"], to=TensorProto.FLOAT),
        oh.make_node("Gather", ["svf", "ch"], ["vs"], axis=0),
        oh.make_node("Mul", [values, "vs"], ["vsc"]),
    ], "vsc"


def _positions(gaps: str, index_bits: int | None) -> list[onnx.NodeProto]:
    """``pos`` (int32): the flat positions of the stored entries, ``cumsum(gaps + 1) - 1``."""
    cast, gaps32 = _as_int32(gaps, index_bits, "g32")
    return [
        *cast,
        _const("one32", np.array(1, np.int32)),
        _const("ax0", np.array(0, np.int32)),
        oh.make_node("Add", [gaps32, "one32"], ["steps"]),
        oh.make_node("CumSum", ["steps", "ax0"], ["pos1"]),
        oh.make_node("Sub", ["pos1", "one32"], ["pos"]),
    ]


def _scatter_at(values: str) -> list[onnx.NodeProto]:
    """``W``: ``values`` at the flat positions ``pos`` of a zero weight, reshaped."""
    return [
        _ref("numel", "numel", "int"),
        _const("one64", np.array([1], np.int64)),
        oh.make_node("Reshape", ["numel", "one64"], ["numel1"]),
        oh.make_node("ConstantOfShape", ["numel1"], ["zeros"],
                     value=oh.make_tensor("", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("ScatterElements", ["zeros", "pos", values], ["flat"], axis=0),
        _ref("shape", "shape", "ints"),
        oh.make_node("Reshape", ["flat", "shape"], ["W"]),
    ]


def _scatter(gaps: str, values: str, index_bits: int, with_scale: bool = False) -> list[onnx.NodeProto]:
    scaled = []
    if with_scale:
        scaled, values = _scaled_values(values)
    return [*_positions(gaps, index_bits), *scaled, *_scatter_at(values)]


def _int32_attr(name: str, attr: str) -> list[onnx.NodeProto]:
    """``name`` = the calling node's int attribute ``attr`` as an int32 scalar."""
    return [_ref(f"{name}64", attr, "int"), oh.make_node("Cast", [f"{name}64"], [name], to=TensorProto.INT32)]


def _grouped_lookup(codes: str) -> list[onnx.NodeProto]:
    """``vals`` = codebook[codes + group_size * ((pos div group_stride) mod channels) div group_rows]: each stored
    code (int32) read in its group's codebook; a reserved zero (code 0 when reserves_zero) stays entry 0."""
    return [
        *_int32_attr("gst", "group_stride"), *_int32_attr("gch", "channels"), *_int32_attr("grw", "group_rows"),
        *_int32_attr("gsz", "group_size"), *_int32_attr("grz", "reserves_zero"),
        _const("one32", np.array(1, np.int32)),
        oh.make_node("Div", ["pos", "gst"], ["gpd"]),
        oh.make_node("Mod", ["gpd", "gch"], ["gpc"]),
        oh.make_node("Div", ["gpc", "grw"], ["gpg"]),
        oh.make_node("Mul", ["gpg", "gsz"], ["goff"]),
        # 1 where the code moves (every code, or every code but a reserved zero), else 0
        oh.make_node("Sub", ["one32", "grz"], ["gnz"]),
        oh.make_node("Add", [codes, "gnz"], ["gcn"]),
        oh.make_node("Min", ["gcn", "one32"], ["gmv"]),
        oh.make_node("Mul", ["goff", "gmv"], ["gmo"]),
        oh.make_node("Add", [codes, "gmo"], ["gidx"]),
        oh.make_node("Gather", ["codebook", "gidx"], ["vals"], axis=0),
    ]


def _grouped_body(kind: str, bits: dict) -> list[onnx.NodeProto]:
    """The body of a decoder with a codebook per group of rows (``_r``): codes, their positions, the lookup, W."""
    nodes, codes = _unpack("codes", bits["c"], "code_bits", "codes_u", "k")
    cast, codes32 = _as_int32(codes, bits["c"], "ci")
    body = nodes + cast
    if kind == layout.DENSE:  # every position, in order
        body += [*_int32_attr("n32", "numel"), _const("zero32", np.array(0, np.int32)),
                 _const("step32", np.array(1, np.int32)), oh.make_node("Range", ["zero32", "n32", "step32"], ["pos"])]
    else:
        nodes, gaps = _unpack("gaps", bits["i"], "index_bits", "gaps_u", "g")
        body += nodes + _positions(gaps, bits["i"])
    body += _grouped_lookup(codes32)
    if kind == layout.DENSE:
        return body + [_ref("shape", "shape", "ints"), oh.make_node("Reshape", ["vals", "shape"], ["W"])]
    return body + _scatter_at("vals")


def _unpack(packed: str, bits: int | None, attr: str, out: str, p: str) -> tuple[list[onnx.NodeProto], str]:
    """Specialised unpacking at ``bits``, or generic (``bits`` None, width from attribute ``attr``)."""
    if bits is None:
        return _unpack_generic(packed, attr, out, p), out
    return unpack_nodes(packed, bits, out, p)


def make_function(op_type: str, opset: int) -> FunctionProto:
    """The decoder function named ``op_type`` (see :func:`onnx_dc.graph.layout.op_type`) at ai.onnx ``opset``."""
    kind, *widths = op_type.split("_")
    with_scale = layout.scaled(op_type)
    widths = [w for w in widths if w not in (layout.SCALED, layout.GROUPED)]
    generic = widths == [layout.GENERIC]
    bits = {"c": None, "i": None} if generic else {w[0]: int(w[1:]) for w in widths}
    body = []
    if layout.grouped(op_type):
        body = _grouped_body(kind, bits)
    elif kind != layout.SPARSE_VALUES:
        nodes, codes = _unpack("codes", bits["c"], "code_bits", "codes_u", "k")
        body += nodes + _lookup(codes, bits["c"], "W" if kind == layout.DENSE else "vals", shaped=kind == layout.DENSE)
    if kind != layout.DENSE and not layout.grouped(op_type):
        nodes, gaps = _unpack("gaps", bits["i"], "index_bits", "gaps_u", "g")
        body += nodes + _scatter(gaps, "vals" if kind == layout.SPARSE else "values", bits["i"], with_scale)
    if with_scale and kind == layout.DENSE:
        _rename_output(body, "W", "Wu")
        body += [oh.make_node("Cast", [layout.SCALE], ["sf"], to=TensorProto.FLOAT),
                 oh.make_node("Mul", ["Wu", "sf"], ["W"])]
    fn = oh.make_function(layout.DOMAIN, op_type, list(layout.inputs_of(kind, with_scale)), ["W"], body,
                          [oh.make_opsetid("", opset)], list(layout.ATTRIBUTES))
    return compact(fn)


def _rename_output(body: list[onnx.NodeProto], old: str, new: str) -> None:
    """The node that writes ``old`` writes ``new`` instead (no node reads ``old`` yet)."""
    for node in body:
        node.output[:] = [new if v == old else v for v in node.output]


def compact(fn: FunctionProto) -> FunctionProto:
    """``fn`` with short value names (inputs and outputs keep theirs) and only the attributes its body reads.

    A node equal to an earlier one (same op, inputs and attributes) is dropped and its
    outputs read from the earlier one, so the body holds no redundant node; the caller's
    other attributes are not declared (onnxruntime and the checker accept a call carrying
    attributes its function does not read).
    """
    names: dict[str, str] = {v: v for v in (*fn.input, *fn.output)}
    fresh = (_short(i) for i in itertools.count())
    seen: dict[bytes, list[str]] = {}
    body, used_attrs = [], set()
    for node in fn.node:
        node.input[:] = [names[v] if v else v for v in node.input]
        key = _without_outputs(node)
        if key in seen and fn.output[0] not in node.output:
            names.update(zip(node.output, seen[key]))
            continue
        for i, v in enumerate(node.output):
            if v not in names:
                names[v] = next(fresh)
            node.output[i] = names[v]
        seen[key] = list(node.output)
        used_attrs.update(a.ref_attr_name for a in node.attribute if a.ref_attr_name)
        body.append(node)
    del fn.node[:]
    fn.node.extend(body)
    kept = [a for a in fn.attribute if a in used_attrs]
    del fn.attribute[:]
    fn.attribute.extend(kept)
    return fn


def _without_outputs(node: onnx.NodeProto) -> bytes:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.output[:]
    return copy.SerializeToString()


def _short(i: int) -> str:
    """Short value name number ``i``: a..z, then aa, ab, ... (the inputs and ``W`` are longer or upper case)."""
    letters = string.ascii_lowercase
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, len(letters))
        out = letters[r] + out
    return out


def make_functions(opset: int, op_types: set[str] | list[str]) -> list[FunctionProto]:
    """The decoder functions for the given op types, sorted by name (same input, same bytes)."""
    return [make_function(op, opset) for op in sorted(set(op_types))]
