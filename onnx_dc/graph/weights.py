"""Find the weights worth compressing, and say why every other parameter is left alone.

A weight site is an initializer that feeds the weight input of a compressible node,
directly or through a chain of Reshape / Transpose / Identity / Squeeze / Unsqueeze nodes
(the ONNX zoo MNIST model reshapes its fc weight before MatMul). Compressing the
initializer itself keeps every such chain intact. A weight shared by several nodes is
one site with several consumers, compressed once.

Nodes inside If / Loop / Scan bodies are searched too (normalize moved every subgraph
weight to the main graph, so a body reads its weights from the outer scope). A recurrent
op (LSTM / GRU / RNN) has two weights, ``W`` and ``R``, each its own site; its bias ``B``
stays float32. A Gather reads an embedding table when its data input is a rank-2 float
initializer and its indices are computed at run time (constant indices are a fixed selection, folded
by onnxruntime, and left alone; a constant table sliced to an input's length, as BERT's position ids
are, is computed). Integer weights of an already-quantized model are listed
with the quantized op types; its float weights are still found.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnx_dc.graph import ops
from onnx_dc.graph.ops import PASS_THROUGH, PIECES
from onnx_dc.graph.walk import node_subgraphs

INTEGER_DTYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                  onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
COMPRESSIBLE_DTYPES = (onnx.TensorProto.FLOAT,)


@dataclass(frozen=True)
class Consumer:
    """A compressible node that reads a weight, and the ops the weight passes through on the way."""

    node: str
    op_type: str
    input_index: int
    via: tuple[str, ...] = ()
    channel_axis: int = 0  # the weight's output-channel axis (0 when it reaches the node through other ops)


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
    def channel_axis(self) -> int:
        """The axis a per-channel scale runs along (``codebook: channel``): the first consumer's output channels."""
        return self.consumers[0].channel_axis

    @property
    def label(self) -> str:
        """The layer's name in messages (:func:`layer_name`)."""
        return layer_name([c.node for c in self.consumers], self.name)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


def layer_name(nodes: Sequence[str], weight: str, with_weight: bool = True) -> str:
    """How a layer is named to the user: the same in the report's table, warnings and progress lines.

    The name of the node that reads the weight (several nodes: their names joined by commas),
    followed, when ``with_weight``, by the weight's name in brackets unless it only repeats the
    node's: ``/layer1/layer1.0/conv1/Conv [onnx::Conv_241]``, but ``ip1`` for ``ip1.weight``. A node
    without a name goes by its weight's name.
    """
    named = list(dict.fromkeys(n for n in nodes if n))
    if not named:
        return weight
    text = ",".join(named)
    repeats = any(weight == n or (weight.startswith(n) and weight[len(n)] in "._/:") for n in named)
    return text if repeats or not with_weight else f"{text} [{weight}]"


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
    notes: tuple[str, ...] = ()


def find_weights(model: onnx.ModelProto) -> Inventory:
    """Find weight sites and skipped parameters of a (normalized) model, subgraphs included."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer if t.name not in {i.name for i in graph.input}}
    scan = _Scan(inits)
    scan.graph(graph, ChainMap())
    for g in scan.graphs:  # after every weight is claimed, so a weight read elsewhere too is not listed twice
        scan.others(g)
    sites = tuple(
        WeightSite(name, tuple(int(d) for d in inits[name].dims), tuple(consumers))
        for name, consumers in scan.found.items()
    )
    return Inventory(sites, tuple(scan.skipped), _quantized_note(scan.quantized))


class _Scan:
    """One walk over the graph and its subgraphs, collecting sites and skipped parameters."""

    def __init__(self, inits: dict[str, onnx.TensorProto]):
        self.inits = inits
        self.found: dict[str, list[Consumer]] = {}
        self.skipped: list[Skipped] = []
        self.claimed: set[str] = set()
        self.quantized: dict[str, list[str]] = {}  # quantized op type -> integer weights
        self.graphs: list[onnx.GraphProto] = []

    def graph(self, graph: onnx.GraphProto, outer: ChainMap) -> None:
        self.graphs.append(graph)
        producer = outer.new_child({out: node for node in graph.node for out in node.output})
        for node in graph.node:
            spec = ops.of(node)
            if ops.quantized(node):
                self.quantized_node(node)
            elif spec is not None and spec.compressible:
                self.node(node, spec, producer)
            for sub in node_subgraphs(node):
                self.graph(sub, producer)

    def node(self, node: onnx.NodeProto, spec: ops.OpSpec, producer: ChainMap) -> None:
        slots = spec.weights
        hit = False
        for idx in slots:
            if idx >= len(node.input) or not node.input[idx]:
                continue
            source, via = _trace(node.input[idx], producer)
            if source not in self.inits:
                continue
            if spec.lookup and not self.is_table(node, self.inits[source], producer):
                return
            self.claim(node, idx, source, via)
            hit = True
            if not spec.every_slot:
                break
        if spec.every_slot and spec.bias is not None and len(node.input) > spec.bias and node.input[spec.bias]:
            self.recurrent_bias(node, node.input[spec.bias], producer)
        if not hit and not spec.lookup:
            first = node.input[slots[0]] if len(node.input) > slots[0] else ""
            self.skipped.append(Skipped(node.name, node.op_type, first,
                                        "no constant weight input (it is computed at run time or is a graph input)"))

    def recurrent_bias(self, node: onnx.NodeProto, name: str, producer: ChainMap) -> None:
        """List the initializers a recurrent op's B is built from (PyTorch: Concat of slices of two biases)."""
        frontier = [name]
        while frontier:
            name = frontier.pop()
            if name in self.inits and name not in self.claimed:
                self.skipped.append(Skipped(node.name, node.op_type, name, "bias (biases stay float32)"))
                self.claimed.add(name)
            elif name in producer and producer[name].op_type in PASS_THROUGH + PIECES:
                src = producer[name]
                frontier.extend(src.input if src.op_type == "Concat" else src.input[:1])

    def is_table(self, node: onnx.NodeProto, table: onnx.TensorProto, producer: ChainMap) -> bool:
        """A Gather reads an embedding table: rank-2 float data, computed indices."""
        if table.data_type not in COMPRESSIBLE_DTYPES or len(table.dims) != 2 or len(node.input) < 2:
            return False
        return not _constant(node.input[1], producer, self.inits)

    def claim(self, node: onnx.NodeProto, idx: int, source: str, via: tuple[str, ...]) -> None:
        tensor = self.inits[source]
        if tensor.data_type not in COMPRESSIBLE_DTYPES:
            dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
            reason = f"{dtype} weight is not compressed (convert the model to float32 to compress it)"
            self.skipped.append(Skipped(node.name, node.op_type, source, reason))
        else:
            axis = 0 if via else ops.channel_axis(node, idx, len(tensor.dims))
            self.found.setdefault(source, []).append(Consumer(node.name, node.op_type, idx, via, axis))
        self.claimed.add(source)

    def quantized_node(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            tensor = self.inits.get(name)
            if tensor is None or tensor.data_type not in INTEGER_DTYPES or _numel(tensor) <= 1 or name in self.claimed:
                continue
            self.quantized.setdefault(node.op_type, []).append(name)
            dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
            self.skipped.append(Skipped(node.name, node.op_type, name,
                                        f"{dtype} weight of an already-quantized model, left as it is"))
            self.claimed.add(name)

    def others(self, graph: onnx.GraphProto) -> None:
        """Every other float parameter (more than a scalar), so the report accounts for its bytes."""
        for node in graph.node:
            for name in node.input:
                tensor = self.inits.get(name)
                if (tensor is None or name in self.claimed or tensor.data_type not in COMPRESSIBLE_DTYPES
                        or _numel(tensor) <= 1):
                    continue
                self.skipped.append(Skipped(node.name, node.op_type, name, _other_reason(node)))
                self.claimed.add(name)


def _quantized_note(quantized: dict[str, list[str]]) -> tuple[str, ...]:
    if not quantized:
        return ()
    ops = ", ".join(f"{op} ({len(ws)} integer weights)" for op, ws in sorted(quantized.items()))
    return (f"already quantized: {ops} stay as they are; float weights are compressed",)


def _trace(name: str, producer: Mapping[str, onnx.NodeProto]) -> tuple[str, tuple[str, ...]]:
    """Follow a value back through pass-through ops (and Slice / Split / Concat pieces of one tensor) to its source.

    PyTorch exports an LSTM's W as Unsqueeze(Concat(Slice(w, gate i), Slice(w, gate f), ...)) to
    reorder the gates: every piece comes from one initializer, which is the weight.
    """
    via: list[str] = []
    while name in producer and producer[name].domain in ("", "ai.onnx"):
        node = producer[name]
        if node.op_type in PASS_THROUGH or node.op_type in ("Slice", "Split"):
            name = node.input[0]
        elif node.op_type == "Concat":
            sources = {_trace(piece, producer)[0] for piece in node.input}
            if len(sources) != 1:
                break
            name = sources.pop()
        else:
            break
        via.append(node.op_type)
    return name, tuple(reversed(via))


def _constant(name: str, producer: Mapping[str, onnx.NodeProto], inits) -> bool:
    """Whether a value is fixed before the model runs: initializers and Constant nodes, and what is computed
    from them alone (a graph input or a Shape makes it a run-time value: BERT's position ids are a constant
    table sliced to the input's length)."""
    memo: dict[str, bool] = {}
    stack = [name]
    while stack:
        top = stack[-1]
        if top in memo:
            stack.pop()
            continue
        node = producer.get(top)
        if top in inits or (node is not None and node.op_type == "Constant"):
            memo[top] = True
        elif node is None or node.op_type in ("Shape", "Size", "RandomNormal", "RandomUniform", "RandomNormalLike",
                                              "RandomUniformLike", "Multinomial", "Bernoulli"):
            memo[top] = False
        else:
            todo = [i for i in node.input if i and i not in memo]
            if todo:
                stack.extend(todo)
                continue
            memo[top] = all(memo[i] for i in node.input if i)
        stack.pop()
    return memo[name]


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _other_reason(node: onnx.NodeProto) -> str:
    spec = ops.of(node)
    if spec is not None and spec.note:
        return f"{node.op_type}: {spec.note}"
    if spec is not None and spec.compressible and not spec.lookup:
        return "bias (biases stay float32)"
    if spec is not None and spec.parameters:
        return f"{node.op_type} parameter (biases, scales and norms stay float32)"
    if node.op_type in PASS_THROUGH:
        return f"shape or constant of {node.op_type}"
    if spec is not None and spec.lookup:
        return f"{node.op_type} with constant indices or a table that is not rank 2 (not an embedding lookup)"
    return f"{node.op_type} is not a compressible op ({', '.join(ops.compressible())})"
