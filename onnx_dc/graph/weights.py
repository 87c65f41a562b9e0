"""Find the weights worth compressing, and say why every other parameter is left alone.

A weight site is an initializer that feeds the weight input of a compressible node,
directly or through a chain of Reshape / Transpose / Identity / Squeeze / Unsqueeze nodes
(the ONNX zoo MNIST model reshapes its fc weight before MatMul). Compressing the
initializer itself keeps every such chain intact. A weight shared by several nodes is
one site with several consumers, compressed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# op type -> indices of inputs that may carry a weight
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (1, 0),
    "MatMul": (1, 0),
}
PASS_THROUGH = ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze")
COMPRESSIBLE_DTYPES = (onnx.TensorProto.FLOAT,)


@dataclass(frozen=True)
class Consumer:
    """A compressible node that reads a weight, and the ops the weight passes through on the way."""

    node: str
    op_type: str
    input_index: int
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightSite:
    """One initializer to compress, with every compressible node that reads it."""

    name: str
    shape: tuple[int, ...]
    consumers: tuple[Consumer, ...]

    @property
    def node(self) -> str:
        """Name of the first consumer (settings follow it)."""
        return self.consumers[0].node

    @property
    def op_type(self) -> str:
        """Op type of the first consumer."""
        return self.consumers[0].op_type

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Skipped:
    """A node or weight left uncompressed, with the reason."""

    node: str
    op_type: str
    tensor: str
    reason: str


@dataclass(frozen=True)
class Inventory:
    """What :func:`find_weights` found."""

    sites: tuple[WeightSite, ...]
    skipped: tuple[Skipped, ...]


def find_weights(model: onnx.ModelProto) -> Inventory:
    """Find weight sites and skipped parameters of a (normalized) model's main graph."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, list[Consumer]] = {}
    skipped: list[Skipped] = []
    claimed: set[str] = set()

    for node in graph.node:
        slots = WEIGHT_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if slots is None:
            continue
        hit = False
        for idx in slots:
            if idx >= len(node.input) or not node.input[idx]:
                continue
            source, via = _trace(node.input[idx], producer)
            if source in inits and source not in graph_inputs:
                tensor = inits[source]
                if tensor.data_type not in COMPRESSIBLE_DTYPES:
                    dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
                    skipped.append(Skipped(node.name, node.op_type, source,
                                           f"{dtype} weight is not compressed (convert the model to float32 to compress it)"))
                else:
                    found.setdefault(source, []).append(Consumer(node.name, node.op_type, idx, via))
                claimed.add(source)
                hit = True
                break
        if not hit:
            skipped.append(Skipped(node.name, node.op_type, node.input[slots[0]] if len(node.input) > slots[0] else "",
                                   "no constant weight input (it is computed at run time or is a graph input)"))

    # Every other float parameter (more than a scalar) is listed too, so the report accounts for its bytes.
    for node in graph.node:
        for name in node.input:
            tensor = inits.get(name)
            if tensor is None or name in claimed or tensor.data_type not in COMPRESSIBLE_DTYPES or _numel(tensor) <= 1:
                continue
            skipped.append(Skipped(node.name, node.op_type, name, _other_reason(node)))
            claimed.add(name)

    sites = tuple(
        WeightSite(name, tuple(int(d) for d in inits[name].dims), tuple(consumers))
        for name, consumers in found.items()
    )
    return Inventory(sites, tuple(skipped))


def _trace(name: str, producer: dict[str, onnx.NodeProto]) -> tuple[str, tuple[str, ...]]:
    via: list[str] = []
    while name in producer and producer[name].op_type in PASS_THROUGH and producer[name].domain in ("", "ai.onnx"):
        via.append(producer[name].op_type)
        name = producer[name].input[0]
    return name, tuple(reversed(via))


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _other_reason(node: onnx.NodeProto) -> str:
    if node.op_type in WEIGHT_INPUTS:
        return "bias (biases stay float32)"
    if node.op_type in ("Add", "Sub", "Mul", "Div", "BatchNormalization", "InstanceNormalization", "LayerNormalization", "PRelu"):
        return f"{node.op_type} parameter (biases, scales and norms stay float32)"
    if node.op_type in PASS_THROUGH:
        return f"shape or constant of {node.op_type}"
    return f"{node.op_type} is not a compressible op (Conv, ConvTranspose, Gemm, MatMul)"
