"""Block reconstruction: each block of compressed layers trained alone to reproduce the original block's output.

A block ``B`` is one planned layer (or a chain of up to ``block_layers`` of them) with the nodes that
follow it in graph order up to the next block's first layer and read what the block computes. Its
inputs are the tensors those nodes read from outside it, its outputs the tensors it computes that
nodes outside it (or the graph's outputs) read. With ``x`` the block's inputs in the compressed
model (the blocks before it already reconstructed) and ``y_o`` the original model's values at the
block's outputs on the same samples, training minimises, over the block's float outputs ``o``,

    L_B = (1 / K) * sum_o mean((B_q(x)_o - y_o)^2) / mean(y_o^2)

(:func:`onnx_dc.train.distill.distillation_loss`; KL for an output a Softmax makes) in the shared
training form of :mod:`onnx_dc.train.forms`: the codebooks train by Eq. 3, weights change code
through their latent values (``reassign_lr``), the biases train, the masks stay as they are. This
is AdaRound / BRECQ's block-wise reconstruction with codebooks in place of rounding: the target
``y_o`` comes from the original's own inputs, so each block also takes out the error arriving
from upstream. onnxruntime-training differentiates the cut-out block alone, so a block trains where
the whole model cannot be differentiated (an op without a gradient, control flow elsewhere).

Each block is judged on its validation samples (every eighth calibration sample, or the ones
given): when training raised ``L_B`` there, the block keeps the result it started from (the
layer passes'). A block that cannot train (an op without a gradient inside it, a layer not
shared, an embedding lookup, a weight read by nodes of another block) keeps that result too;
the reason is one line (a warning for a gradient that cannot be built).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.data.calib import Samples
from onnx_dc.errors import ModelError
from onnx_dc.graph import external, ops
from onnx_dc.graph.walk import all_nodes, node_subgraphs, reads
from onnx_dc.passes.state import CompressionState
from onnx_dc.runtime.collect import cut_model
from onnx_dc.train.distill import DISTILL_DEFAULTS, distill, run_teacher, validation_split
from onnx_dc.train.settings import TrainSettings, resolve_train_settings

log = logging.getLogger(__name__)

IR_VERSION = 10  # onnxruntime 1.19 reads no newer model
# Training settings of a block (over distill's defaults): the codebook stage alone. A block is small,
# so it affords many more epochs than the whole model.
BLOCK_DEFAULTS = {"retrain": {"epochs": 0}, "codebook": {"epochs": 16, "lr": 1e-4, "reassign_lr": 1e-3,
                                                         "lr_schedule": "cosine"}}


@dataclass(frozen=True)
class Block:
    """A part of the graph that trains on its own (see the module docstring).

    Attributes:
        name: the node name of its first layer.
        layers: the planned weights it trains (initializer names).
        nodes: indices of its nodes in the model's graph, in graph order (with the nodes that compute
            only from initializers and feed it, such as a weight's Reshape).
        inputs: tensors it reads from outside it (graph inputs included, initializers not).
        outputs: tensors it computes that nodes outside it, or the graph's outputs, read.
        skipped: why it does not train, or None.
    """

    name: str
    layers: tuple[str, ...]
    nodes: tuple[int, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    skipped: str | None = None


@dataclass
class BlockRecord:
    """What reconstruction did to one block; errors are on its validation samples (squared relative L2)."""

    name: str
    layers: list[str]
    nodes: int = 0
    error_before: float | None = None
    error_after: float | None = None
    kept: bool = False  # the trained values stayed in the state
    skipped: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain values, for JSON."""
        return {"name": self.name, "layers": self.layers, "nodes": self.nodes, "error_before": self.error_before,
                "error_after": self.error_after, "kept": self.kept, "skipped": self.skipped,
                "seconds": round(self.seconds, 3)}


@dataclass
class BlockResult:
    """Every block's record, in graph order."""

    settings: TrainSettings
    block_layers: int = 1
    blocks: list[BlockRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kept(self) -> list[BlockRecord]:
        """The blocks whose training stayed."""
        return [b for b in self.blocks if b.kept]

    def summary(self) -> str:
        """One line: how many blocks trained and kept, and their validation error before and after."""
        kept = self.kept
        skipped = sum(b.skipped is not None for b in self.blocks)
        text = f"{len(kept)} of {len(self.blocks)} block(s) kept their training, {skipped} could not train"
        if kept:
            before = float(np.mean([b.error_before for b in kept]))
            after = float(np.mean([b.error_after for b in kept]))
            text += f"; mean validation error of those {before:.4g} -> {after:.4g}"
        return text

    def to_dict(self) -> dict:
        """Plain values, for JSON."""
        return {"settings": self.settings.to_dict(), "block_layers": self.block_layers,
                "seconds": round(self.seconds, 3), "summary": self.summary(),
                "blocks": [b.to_dict() for b in self.blocks]}


def _top_level_index(graph: onnx.GraphProto) -> dict[str, int]:
    """Node name -> index of the top-level node that is it or holds it in a subgraph."""
    out: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        out.setdefault(node.name, i)
        for sub in node_subgraphs(node):
            for inner in all_nodes(sub):
                out.setdefault(inner.name, i)
    return out


def _constant_nodes(graph: onnx.GraphProto) -> set[int]:
    """Nodes whose every input is an initializer or another such node's output (a weight's Reshape, a Constant)."""
    known = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    out = set()
    for i, node in enumerate(graph.node):
        if not any(True for _ in node_subgraphs(node)) and reads(node) <= known:
            out.add(i)
            known.update(o for o in node.output if o)
    return out


def _why_not(state: CompressionState, name: str) -> str | None:
    """Why a planned layer cannot train in a block, or None."""
    layer = state.layers[name]
    for c in layer.entry.site.consumers:
        spec = ops.spec(c.op_type)
        if spec is not None and spec.lookup:
            return f"layer {layer.label} is an embedding lookup (its rows are weighted by how often they are read)"
    if layer.codebook is None:
        return f"layer {layer.label} is not shared (no codebook to train)"
    return None


def find_blocks(state: CompressionState, block_layers: int = 1) -> list[Block]:
    """The blocks of ``state``'s model, in graph order (see the module docstring).

    The planned layers are ordered by their first reading node; consecutive layers that can
    train are chained, up to ``block_layers`` in a block, and a chain also ends where what it
    computes is read by more than one node (a branch: the end of a residual block), so that
    chains follow the model's blocks. A layer that cannot train is a block of its own, with the
    reason in ``skipped``. Layers whose first node is the same (an LSTM's ``W`` and ``R``) always
    go together.

    Raises:
        ValueError: for ``block_layers`` below 1.
    """
    if block_layers < 1:
        raise ValueError(f"block_layers must be at least 1, got {block_layers}")
    graph = state.model.graph
    index = _top_level_index(graph)
    heads = {name: sorted({index[c.node] for c in layer.entry.site.consumers if c.node in index})
             for name, layer in state.layers.items()}
    lost = [name for name, found in heads.items() if not found]
    units: dict[int, list[str]] = {}
    for name in sorted((n for n in heads if heads[n]), key=lambda n: heads[n][0]):
        units.setdefault(heads[name][0], []).append(name)
    cut = _Cutter(graph, state)
    starts = list(units)
    groups: list[tuple[int, list[str], str | None]] = []  # (first node, layers, why they cannot train)
    closed = True  # the last group takes no more layers
    for u, (start, names) in enumerate(units.items()):
        why = next((w for w in (_why_not(state, n) for n in names) if w), None)
        if why is None and not closed and len(groups[-1][1]) + len(names) <= block_layers:
            groups[-1][1].extend(names)
        else:
            groups.append((start, list(names), why))
        closed = why is not None or block_layers == 1 or cut.branches(
            cut(start, names, {i for n in names for i in heads[n]}, start,
                starts[u + 1] if u + 1 < len(starts) else len(graph.node)))
    blocks = [Block(state.layers[n].label, (n,), skipped="its nodes are not in the graph") for n in lost]
    for g, (start, names, why) in enumerate(groups):
        stop = groups[g + 1][0] if g + 1 < len(groups) else len(graph.node)
        first = graph.node[start].name or f"node {start}"
        if why is not None:
            blocks.append(Block(first, tuple(names), skipped=why))
        else:
            blocks.append(cut(start, names, {i for n in names for i in heads[n]}, start, stop))
    return blocks


class _Cutter:
    """Cuts blocks out of one graph (what every block needs of it is computed once)."""

    def __init__(self, graph: onnx.GraphProto, state: CompressionState) -> None:
        self.graph = graph
        self.planned = set(state.layers)
        self.constant = _constant_nodes(graph)
        self.producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self.reads = [reads(n) for n in graph.node]
        self.readers: dict[str, set[int]] = {}
        for i, names in enumerate(self.reads):
            for t in names:
                self.readers.setdefault(t, set()).add(i)
        self.inits = {t.name for t in graph.initializer}
        self.outer = set(self.producer) | {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}

    def branches(self, block: Block) -> bool:
        """Whether more than one node (or a node and the graph's outputs) reads one of the block's outputs."""
        return any(len(self.readers.get(o, ())) + (o in self.graph_outputs) > 1 for o in block.outputs)

    def __call__(self, first_node: int, names: list[str], heads: set[int], start: int, stop: int) -> Block:
        """The block of layers ``names`` (read by nodes ``heads``) whose nodes lie in ``[start, stop)``."""
        graph, layers = self.graph, tuple(names)
        first = graph.node[first_node].name or f"node {first_node}"
        beyond = sorted(i for i in heads if i >= stop)
        if beyond:
            node = graph.node[beyond[0]]
            return Block(first, layers, skipped=f"a weight of it is also read by node {node.name} ({node.op_type}) "
                                                "of a later block")
        members, made = [], set()
        for i in range(start, stop):
            if i not in self.constant and (i in heads or self.reads[i] & made):
                members.append(i)
                made.update(o for o in graph.node[i].output if o)
        # the initializer-only nodes that feed the members (a weight's Reshape / Transpose, Constant nodes)
        prelude: set[int] = set()
        todo = [t for i in members for t in self.reads[i]]
        while todo:
            j = self.producer.get(todo.pop())
            if j is not None and j in self.constant and j not in prelude:
                prelude.add(j)
                todo.extend(self.reads[j])
        nodes = sorted(set(members) | prelude)
        read = set().union(*(self.reads[i] for i in nodes))
        foreign = sorted((read & self.planned) - set(names))
        if foreign:
            return Block(first, layers, skipped=f"it reads the weight {foreign[0]} of another layer")
        inside = {o for i in nodes for o in graph.node[i].output if o}
        inputs = tuple(sorted((read & self.outer) - inside - self.inits))
        mine = set(nodes)
        outputs = tuple(dict.fromkeys(o for i in members for o in graph.node[i].output if o and (
            o in self.graph_outputs or self.readers.get(o, set()) - mine)))
        if not outputs:
            return Block(first, layers, tuple(nodes), inputs, skipped="nothing outside it reads what it computes")
        return Block(first, layers, tuple(nodes), inputs, outputs)


def _value_info(name: str, per_sample: np.ndarray, stackable: bool) -> onnx.ValueInfoProto:
    """A tensor's declaration from its values on the samples (``[n, *feed shape]``); a free batch when stackable."""
    shape: list[int | str] = list(per_sample.shape[1:])
    if stackable and shape:
        shape[0] = "batch"
    return oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(per_sample.dtype), shape)


def block_model(state: CompressionState, block: Block, samples: Samples,
                outputs: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The block cut out of ``state``'s model: its nodes, the initializers they read (the planned weights at
    their present values), its inputs and outputs declared from their values (``samples``: the block's
    feeds; ``outputs``: values on the same samples)."""
    src = state.model
    out = onnx.ModelProto()
    out.ir_version = IR_VERSION
    out.opset_import.extend(src.opset_import)
    out.functions.extend(src.functions)
    g = out.graph
    g.name = f"block {block.name}"
    g.node.extend(src.graph.node[i] for i in block.nodes)
    read = set().union(*(reads(n) for n in g.node))
    for init in src.graph.initializer:
        if init.name not in read:
            continue
        layer = state.layers.get(init.name)
        if layer is not None:
            g.initializer.append(numpy_helper.from_array(layer.weights, init.name))
        else:
            g.initializer.append(init)
            if external.is_external(g.initializer[-1]):
                external.embed(g.initializer[-1])
    g.sparse_initializer.extend(t for t in src.graph.sparse_initializer if t.values.name in read)
    for n in block.inputs:
        if n in samples.constants:  # fed unchanged with every batch: its own shape
            c = np.asarray(samples.constants[n])
            g.input.append(oh.make_tensor_value_info(n, oh.np_dtype_to_tensor_dtype(c.dtype), list(c.shape)))
        else:
            g.input.append(_value_info(n, samples.arrays[n], samples.stackable))
    g.output.extend(_value_info(n, a, samples.stackable) for n, a in outputs.items())
    return out


def _values(model: onnx.ModelProto, names: Sequence[str], replace: Mapping, samples: Samples,
            threads: int) -> dict[str, np.ndarray]:
    """``model``'s tensors ``names`` on every sample (graph inputs straight from the samples)."""
    given = {n: samples.arrays[n] for n in names if n in samples.arrays}
    run = [n for n in names if n not in given and n not in samples.constants]
    if run:
        given.update(run_teacher(cut_model(model, run, replace), samples, run, threads))
    return given


def _stacks(model: onnx.ModelProto, names: Sequence[str], replace: Mapping, samples: Samples, threads: int) -> bool:
    """Whether every tensor ``names`` carries the samples' batch axis: its first dimension doubles when two
    samples run joined instead of one (a shape computed from the input does not)."""
    from onnx_dc.runtime.session import InferenceSession

    run = [n for n in names if n not in samples.arrays and n not in samples.constants]
    if not run or len(samples) < 2:
        return True
    session = InferenceSession(cut_model(model, run, replace), threads)
    one = session.run(run, next(samples.take(slice(0, 1)).batches(1)))
    two = session.run(run, next(samples.take(slice(0, 2)).batches(2)))
    return all(a.ndim and b.shape == (2 * a.shape[0], *a.shape[1:]) for a, b in zip(one, two))


def _block_samples(block: Block, values: Mapping[str, np.ndarray], samples: Samples) -> Samples:
    constants = {n: samples.constants[n] for n in block.inputs if n in samples.constants}
    return Samples({n: values[n] for n in block.inputs if n not in constants}, constants, samples.stackable)


def reconstruct_blocks(state: CompressionState, original: onnx.ModelProto, samples: Samples,
                       settings: TrainSettings | None = None, *, name: str = "model",
                       validation: Samples | None = None, block_layers: int = 1) -> BlockResult:
    """Train every block of ``state`` (already pruned and shared) to reproduce ``original``'s block outputs.

    Blocks go in graph order; each block's inputs are measured on ``state``'s model as the blocks
    before it left it. The trained codebooks, codes and biases go into ``state`` (the same
    :class:`~onnx_dc.passes.state.LayerState` objects; biases into ``state.model``); masks do not change.
    Logs one line per block (INFO) and a warning for a block whose gradient cannot be built.

    Args:
        state: after the layer passes (every layer to train shared).
        original: the model ``state`` was made from (its tensor names), with its original weights and biases.
        samples: calibration samples of the model's inputs.
        settings: the training schedule of each block (default: :data:`BLOCK_DEFAULTS` over
            :data:`~onnx_dc.train.distill.DISTILL_DEFAULTS`); only its codebook stage runs.
        name: the model's name in messages.
        validation: the samples that judge each block (None: every eighth of ``samples``, trained on the rest).
        block_layers: layers per block, at most (chains of consecutive layers).

    Raises:
        TrainingUnavailable: when onnxruntime-training cannot be imported.
        ModelError: when ``original`` lacks a tensor a block reads or writes.
    """
    from onnx_dc.train.ort_training import training_modules

    training_modules()
    start = time.perf_counter()
    if settings is None:
        settings = resolve_train_settings(DISTILL_DEFAULTS, BLOCK_DEFAULTS, source="blocks")
    train_part, val_part = (samples, validation) if validation is not None else validation_split(samples)
    result = BlockResult(settings, block_layers)
    known = {o for n in original.graph.node for o in n.output} | {i.name for i in original.graph.input}
    for block in find_blocks(state, block_layers):
        record = BlockRecord(block.name, [state.layers[n].label for n in block.layers], len(block.nodes))
        result.blocks.append(record)
        if block.skipped is not None:
            record.skipped = f"{name}: block {block.name}: {block.skipped}"
            log.info("block %s: not trained: %s", block.name, block.skipped)
            continue
        missing = [t for t in (*block.inputs, *block.outputs) if t not in known]
        if missing:
            raise ModelError(f"{name}: the original model has no tensor {missing[0]!r} (block {block.name}); give "
                             "the model the compression started from")
        _train_block(state, original, block, train_part, val_part, settings, name, record)
    result.seconds = time.perf_counter() - start
    log.info("block reconstruction: %s in %.1f s", result.summary(), result.seconds)
    return result


def _train_block(state: CompressionState, original: onnx.ModelProto, block: Block, train_part: Samples,
                 val_part: Samples, settings: TrainSettings, name: str, record: BlockRecord) -> None:
    start = time.perf_counter()
    current = {n: layer.weights for n, layer in state.layers.items()}

    def measured(part: Samples) -> tuple[Samples, dict[str, np.ndarray]]:
        x = _block_samples(block, _values(state.model, block.inputs, current, part, settings.threads), part)
        return x, _values(original, block.outputs, {}, part, settings.threads)

    if train_part.stackable and not _stacks(state.model, [*block.inputs, *block.outputs], current, train_part,
                                            settings.threads):
        # a tensor of the block without the samples' batch axis (a shape computed at run time, as a
        # transformer's reshapes read): measured and trained one sample at a time, as each was fed
        train_part, val_part = replace(train_part, stackable=False), replace(val_part, stackable=False)
    (x_train, y_train), (x_val, y_val) = measured(train_part), measured(val_part)
    model = block_model(state, block, x_train, y_train)
    sub = CompressionState(model, state.plan, {n: state.layers[n] for n in block.layers}, None)
    tuned = distill(sub, x_train, settings, name=f"{name}: block {block.name}", teacher=model,
                    prune_step=lambda s, step: False, share_state=lambda s: None, keep_better=True,
                    validation=x_val, teacher_outputs=y_train, validation_outputs=y_val)
    if tuned.changed:  # the trained biases (and other float parameters) go back into the model
        trained = {t.name: t for t in sub.model.graph.initializer if t.name not in sub.layers}
        for init in state.model.graph.initializer:
            if init.name in trained and init.name not in state.layers:
                init.CopyFrom(trained[init.name])
    record.skipped = tuned.skipped
    record.kept = tuned.changed
    if tuned.validation is not None:
        record.error_before, record.error_after = tuned.validation
        if not tuned.changed:
            record.error_after = record.error_before
    record.seconds = time.perf_counter() - start
    if tuned.skipped is None:
        log.info("block %s (%d layer(s), %d nodes): validation error %.4g -> %.4g%s in %.1f s", block.name,
                 len(block.layers), len(block.nodes), record.error_before or 0.0, record.error_after or 0.0,
                 "" if record.kept else " (undone)", record.seconds)
