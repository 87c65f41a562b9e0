"""The model-local ONNX functions that rebuild compressed weights (domain ``onnx_dc``).

These are the "layer plugin" of a ``*.dc.onnx`` file, written with standard ops only so
that stock onnxruntime runs the file and folds every decoder into a dense constant at
session creation. The math (docs/DCONNX.md has the byte layout):

    unpack(bytes, b, n)[i] = floor(win[q_i] / 2**s_i) mod 2**b,   p_i = i*b, q_i = p_i div 8, s_i = p_i mod 8
        where win[j] = bytes[j] + 256*bytes[j+1] + 65536*bytes[j+2]   (bytes zero-padded by 2)
    DecodeDense:        W = reshape(codebook[unpack(codes, code_bits, count)], shape)
    DecodeSparse:       pos = cumsum(unpack(gaps, index_bits, count) + 1) - 1
                        W = reshape(scatter(zeros(numel), pos, codebook[unpack(codes, code_bits, count)]), shape)
    DecodeSparseValues: the same with the float32 ``values`` in place of codebook[codes]

Integer work is int64 Div/Mod rather than BitShift/BitwiseAnd so that the body is valid
from opset 13 on (a function must use the model's own opset version). Every attribute the
body needs (widths, count, shape) is read through attribute references, so one function
definition serves every layer.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto
from onnx import helper as oh

DOMAIN = "onnx_dc"
DOMAIN_VERSION = 1
MIN_OPSET = 13

DECODE_DENSE = "DecodeDense"
DECODE_SPARSE = "DecodeSparse"
DECODE_SPARSE_VALUES = "DecodeSparseValues"
DECODER_OPS = (DECODE_DENSE, DECODE_SPARSE, DECODE_SPARSE_VALUES)

# Settings carried for the record (the report and re-compression read them back).
SETTING_ATTRS = ("sparse_ratio", "prune_quality", "class_num", "quantize_term", "centroid_init")


def _i64(name: str, values: list[int]) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _ref(out: str, attr: str, kind: str) -> onnx.NodeProto:
    """Constant whose value is the calling node's attribute ``attr`` (an attribute reference)."""
    attr_type = {"int": AttributeProto.INT, "ints": AttributeProto.INTS}[kind]
    node = oh.make_node("Constant", [], [out])
    node.attribute.append(oh.make_attribute_ref(f"value_{kind}", attr_type, ref_attr_name=attr))
    return node


def _unpack_nodes(packed: str, bits_attr: str, count: str, out: str, p: str) -> list[onnx.NodeProto]:
    """Nodes computing ``out[i]`` = symbol ``i`` of width ``bits_attr`` from uint8 ``packed``."""
    return [
        _ref(f"{p}n", bits_attr, "int"),
        _i64(f"{p}z", [0, 0]),
        oh.make_node("Cast", [f"{p}z"], [f"{p}p"], to=TensorProto.UINT8),
        oh.make_node("Concat", [packed, f"{p}p"], [f"{p}q"], axis=0),
        oh.make_node("Cast", [f"{p}q"], [f"{p}b"], to=TensorProto.INT64),
        # win[j] = b[j] + 256 b[j+1] + 65536 b[j+2]: any 16-bit symbol at bit offset < 8 fits.
        oh.make_node("Slice", [f"{p}b", "c0", "cm2"], [f"{p}a"]),
        oh.make_node("Slice", [f"{p}b", "c1", "cm1"], [f"{p}b1"]),
        oh.make_node("Slice", [f"{p}b", "c2", "cbig"], [f"{p}b2"]),
        oh.make_node("Mul", [f"{p}b1", "c256"], [f"{p}bs"]),
        oh.make_node("Mul", [f"{p}b2", "c65536"], [f"{p}cs"]),
        oh.make_node("Add", [f"{p}a", f"{p}bs"], [f"{p}w1"]),
        oh.make_node("Add", [f"{p}w1", f"{p}cs"], [f"{p}w"]),
        oh.make_node("Range", ["s0", count, "s1"], [f"{p}i"]),
        oh.make_node("Mul", [f"{p}i", f"{p}n"], [f"{p}o"]),
        oh.make_node("Div", [f"{p}o", "s8"], [f"{p}d"]),
        oh.make_node("Mod", [f"{p}o", "s8"], [f"{p}s"]),
        oh.make_node("Gather", [f"{p}w", f"{p}d"], [f"{p}x"], axis=0),
        oh.make_node("Gather", ["pow2", f"{p}s"], [f"{p}v"], axis=0),
        oh.make_node("Gather", ["pow2", f"{p}n"], [f"{p}m"], axis=0),
        oh.make_node("Div", [f"{p}x", f"{p}v"], [f"{p}h"]),
        oh.make_node("Mod", [f"{p}h", f"{p}m"], [out]),
    ]


def _shared_constants() -> list[onnx.NodeProto]:
    scalar = lambda name, v: oh.make_node(  # noqa: E731
        "Constant", [], [name], value=oh.make_tensor(name, TensorProto.INT64, [], [v])
    )
    return [
        _i64("c0", [0]),
        _i64("c1", [1]),
        _i64("c2", [2]),
        _i64("cm1", [-1]),
        _i64("cm2", [-2]),
        _i64("cbig", [2**62]),
        _i64("c256", [256]),
        _i64("c65536", [65536]),
        scalar("s0", 0),
        scalar("s1", 1),
        scalar("s8", 8),
        _i64("pow2", [1 << k for k in range(17)]),
        _ref("count", "count", "int"),
        _ref("shape", "shape", "ints"),
    ]


def _scatter_nodes(values: str) -> list[onnx.NodeProto]:
    return [
        oh.make_node("Add", ["gaps_u", "s1"], ["steps"]),
        oh.make_node("CumSum", ["steps", "s0"], ["pos1"]),
        oh.make_node("Sub", ["pos1", "s1"], ["pos"]),
        _ref("numel", "numel", "int"),
        oh.make_node("Reshape", ["numel", "c1"], ["numel1"]),
        oh.make_node("ConstantOfShape", ["numel1"], ["zeros"], value=oh.make_tensor("z", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("ScatterElements", ["zeros", "pos", values], ["flat"], axis=0),
        oh.make_node("Reshape", ["flat", "shape"], ["W"]),
    ]


def make_functions(opset: int) -> list[FunctionProto]:
    """The three decoder functions, written against ``ai.onnx`` version ``opset``."""
    imports = [oh.make_opsetid("", opset)]
    attrs = ["code_bits", "index_bits", "count", "numel", "shape", *SETTING_ATTRS]
    codes = _unpack_nodes("codes", "code_bits", "count", "codes_u", "k")
    gaps = _unpack_nodes("gaps", "index_bits", "count", "gaps_u", "g")
    lookup = oh.make_node("Gather", ["codebook", "codes_u"], ["vals"], axis=0)
    dense = oh.make_function(
        DOMAIN, DECODE_DENSE, ["codebook", "codes"], ["W"],
        [*_shared_constants(), *codes, lookup, oh.make_node("Reshape", ["vals", "shape"], ["W"])],
        imports, attrs,
    )
    sparse = oh.make_function(
        DOMAIN, DECODE_SPARSE, ["codebook", "codes", "gaps"], ["W"],
        [*_shared_constants(), *codes, lookup, *gaps, *_scatter_nodes("vals")],
        imports, attrs,
    )
    values = oh.make_function(
        DOMAIN, DECODE_SPARSE_VALUES, ["values", "gaps"], ["W"],
        [*_shared_constants(), *gaps, *_scatter_nodes("values")],
        imports, attrs,
    )
    return [dense, sparse, values]
