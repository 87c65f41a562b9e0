"""The op table: what each op type is to onnx_dc, in one place.

Every other module asks this table instead of naming op types. An entry says, for one op type:

* ``weights``: the inputs that may carry a weight, in the order they are tried; with
  ``every_slot`` each of them is a weight of its own (recurrent ``W`` and ``R``), else the
  first one fed by an initializer is the weight;
* ``lookup``: the weight is a table read by computed indices (an embedding), not a matrix product;
* ``bias``: the input that holds the bias added to the layer's rows (biases stay float32);
* ``view``: how the weight acts on the layer's input as ``y = W2 x`` with rows = output
  channels (:mod:`onnx_dc.graph.layerview` builds it): ``conv`` (im2col patches),
  ``conv_transpose`` (the Conv it equals), ``gemm``, ``matmul`` (rows of the input's last axis),
  ``recurrent`` (``W`` reads ``x_t``, ``R`` reads ``h_{t-1}``), ``lookup`` (an embedding table: the
  one-hot rows of the indices); None: no view, data-aware passes
  leave the weight to the data-free path. The view also says how input statistics are collected
  (:mod:`onnx_dc.runtime.collect`: rows, patches or steps);
* ``equivalent``: the rewrite of :mod:`onnx_dc.train.equivalents` that gives onnxruntime-training
  a differentiable form of the op (None: it has a gradient of its own, or none at all);
* ``trains_parameters``: its float initializer inputs other than the weight (biases, scales)
  are trained along with the weights;
* ``parameters``: its float initializer inputs are parameters that stay float32 (biases,
  scales, norms), which the report names as such.

Adding an op is one :func:`register` call (or one entry below) plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

STANDARD_DOMAINS = ("", "ai.onnx")
VIEWS = ("conv", "conv_transpose", "gemm", "matmul", "recurrent", "lookup")
# Ops that only move a weight's elements on its way to the consumer (the zoo MNIST model reshapes its fc weight).
PASS_THROUGH = ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze")
# Ops that cut a weight into parts or join parts of one weight (an exporter's gate reorder).
PIECES = ("Slice", "Split", "Concat")
QUANTIZED = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM", "QGemm", "DequantizeLinear", "MatMulNBits")


@dataclass(frozen=True)
class OpSpec:
    """What one op type is to onnx_dc (see the module docstring)."""

    op_type: str
    domain: str = ""
    weights: tuple[int, ...] = ()
    every_slot: bool = False
    lookup: bool = False
    bias: int | None = None
    view: str | None = None
    equivalent: str | None = None
    trains_parameters: bool = False
    parameters: bool = False
    note: str | None = None  # why the op's float inputs stay float, where "not compressible" says too little

    @property
    def compressible(self) -> bool:
        """Whether the op reads a weight onnx_dc compresses."""
        return bool(self.weights)

    @property
    def recurrent(self) -> bool:
        """A recurrent op: its weights read the step's input and the previous hidden state."""
        return self.view == "recurrent"


_TABLE: dict[tuple[str, str], OpSpec] = {}


def specs() -> list[OpSpec]:
    """Every entry of the table."""
    return list(_TABLE.values())


def register(spec: OpSpec) -> OpSpec:
    """Add (or replace) the entry of ``spec.op_type`` in ``spec.domain``; returns it.

    Raises:
        ValueError: when the entry names an unknown view.
    """
    if spec.view is not None and spec.view not in VIEWS:
        raise ValueError(f"op table: {spec.op_type}: unknown view {spec.view!r} (one of {', '.join(VIEWS)})")
    _TABLE[(_domain(spec.domain), spec.op_type)] = spec
    return spec


def unregister(op_type: str, domain: str = "") -> None:
    """Remove an entry (nothing happens when there is none)."""
    _TABLE.pop((_domain(domain), op_type), None)


def spec(op_type: str, domain: str = "") -> OpSpec | None:
    """The entry of ``op_type`` in ``domain``, or None."""
    return _TABLE.get((_domain(domain), op_type))


def of(node: onnx.NodeProto) -> OpSpec | None:
    """The entry of a node's op, or None."""
    return _TABLE.get((_domain(node.domain), node.op_type))


def compressible() -> tuple[str, ...]:
    """Op types whose weights are compressed, in table order."""
    return tuple(s.op_type for s in _TABLE.values() if s.compressible)


def is_standard(node: onnx.NodeProto, *op_types: str) -> bool:
    """Whether ``node`` is a default-domain op of one of ``op_types``."""
    return node.domain in STANDARD_DOMAINS and node.op_type in op_types


def quantized(node: onnx.NodeProto) -> bool:
    """An op of an already-quantized model (its integer weights are left as they are)."""
    return node.domain in (*STANDARD_DOMAINS, "com.microsoft") and (
        node.op_type in QUANTIZED or node.op_type.startswith("QLinear"))


def channel_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int:
    """The axis of output channels in a weight that ``node`` reads directly as input ``input_index`` (rank ``rank``).

    ``conv``: 0 (``[out, in / group, *kernel]``); ``conv_transpose``: 1; ``gemm``: the rows of ``op(B)``,
    0 under ``transB`` else 1 (as the first input, the rows of ``op(A)``); ``matmul``: the last axis (the
    first input: the one before it); ``recurrent``: 1 (``[D, gates * H, in]``); ``lookup``: the table's
    width, its last axis. Any other op: 0.
    """
    entry = of(node)
    view = entry.view if entry is not None else None
    trans = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
    last = max(rank - 1, 0)
    if view == "gemm":
        flag = trans.get("transB" if input_index == 1 else "transA", 0)
        return (0 if flag else 1) if input_index == 1 else (1 if flag else 0)
    if view == "matmul":
        return last if input_index == 1 else max(rank - 2, 0)
    return {"conv_transpose": min(1, last), "recurrent": min(1, last), "lookup": last}.get(view, 0)


def _domain(domain: str) -> str:
    return "" if domain in STANDARD_DOMAINS else domain


for _spec in (
    OpSpec("Conv", weights=(1,), bias=2, view="conv", trains_parameters=True),
    OpSpec("ConvTranspose", weights=(1,), bias=2, view="conv_transpose", equivalent="conv_transpose",
           trains_parameters=True),
    OpSpec("Gemm", weights=(1, 0), bias=2, view="gemm", trains_parameters=True),
    OpSpec("MatMul", weights=(1, 0), view="matmul", trains_parameters=True),
    OpSpec("LSTM", weights=(1, 2), every_slot=True, bias=3, view="recurrent", equivalent="recurrent"),
    OpSpec("GRU", weights=(1, 2), every_slot=True, bias=3, view="recurrent", equivalent="recurrent"),
    OpSpec("RNN", weights=(1, 2), every_slot=True, bias=3, view="recurrent", equivalent="recurrent"),
    OpSpec("Gather", weights=(0,), lookup=True, view="lookup"),
    OpSpec("Add", trains_parameters=True, parameters=True),
    OpSpec("Sub", trains_parameters=True, parameters=True),
    OpSpec("Mul", trains_parameters=True, parameters=True),
    OpSpec("Div", parameters=True),
    OpSpec("PRelu", equivalent="prelu", trains_parameters=True, parameters=True),
    OpSpec("BatchNormalization", equivalent="batch_norm", parameters=True),
    OpSpec("InstanceNormalization", equivalent="normalization", parameters=True),
    OpSpec("GroupNormalization", equivalent="normalization", parameters=True),
    OpSpec("LpNormalization", equivalent="normalization"),
    OpSpec("LayerNormalization", equivalent="layer_norm", parameters=True),
    OpSpec("DepthToSpace", equivalent="depth_to_space"),
    OpSpec("HardSigmoid", equivalent="hard_sigmoid"),
    OpSpec("HardSwish", equivalent="hard_swish"),
    OpSpec("Resize", equivalent="resize"),
    *(OpSpec(op, equivalent="activation") for op in ("Elu", "Selu", "Celu", "Softplus", "Mish", "Softsign",
                                                     "ThresholdedRelu", "Shrink", "Sinh", "Cosh", "Tan", "Sum", "Mean")),
    *(OpSpec(op, equivalent="reduction") for op in ("ReduceSumSquare", "ReduceL1", "ReduceLogSum")),
    *(OpSpec(op, equivalent="layout") for op in ("GlobalMaxPool", "SpaceToDepth", "CumSum", "Transpose")),
    OpSpec("Einsum", equivalent="einsum"),
    # onnxruntime's transformer optimizer fuses BERT-like graphs into these
    OpSpec("Attention", domain="com.microsoft", weights=(1,), bias=2, view="matmul"),
    OpSpec("SkipLayerNormalization", domain="com.microsoft", parameters=True),
    OpSpec("SkipSimplifiedLayerNormalization", domain="com.microsoft", parameters=True),
    OpSpec("FastGelu", domain="com.microsoft", parameters=True),
    OpSpec("BiasGelu", domain="com.microsoft", parameters=True),
    OpSpec("EmbedLayerNormalization", domain="com.microsoft", parameters=True,
           note="its word, position and segment tables are read inside the fused op; compress the model "
                "before onnxruntime's transformer optimizer fuses it to compress them"),
):
    register(_spec)
