"""Collect the input statistics of compressed layers by running calibration samples in onnxruntime.

Each layer's input tensor is exposed as an extra graph output; one session runs the
samples batch by batch and each batch's inputs are folded into running sums
(:class:`~onnx_dc.passes.stats.InputStats`) and dropped, so memory holds one batch of
activations, never all of them. Conv inputs become im2col patches in chunks of rows, at
most ``MAX_POSITIONS`` output positions per sample. A recurrent node's ``R`` reads its
previous hidden state: ``Y`` shifted one step along each direction, ``initial_h`` first
(:func:`recurrent_rows`). Sequential waves keep the activations later waves read, so each
wave runs only the nodes no earlier wave ran (:class:`_Carry`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from onnx_dc.data.calib import Samples, real_tokens, token_mask
from onnx_dc.graph import external
from onnx_dc.graph.io import serialize
from onnx_dc.graph.layerview import LayerView, layer_views
from onnx_dc.graph.walk import all_nodes, inline_if, needed_nodes, node_subgraphs, reads, weights_upstream
from onnx_dc.passes.state import CompressionState
from onnx_dc.passes.stats import InputStats, WeightStats
from onnx_dc.runtime.session import InferenceSession

FULL_HESSIAN_MAX_DIM = 4096  # E[x x^T] is d x d doubles: 4096 -> 128 MB per group
_CHUNK_ELEMENTS = 1 << 22  # im2col rows are built this many elements at a time
# Conv statistics use at most this many output positions per sample (a seeded choice):
# neighbouring patches are highly correlated, and the d x d sums cost rows x d^2.
MAX_POSITIONS = 256
# Sequential waves carry the activations later waves read (both models, all samples) up to this
# many bytes by default (the config's calib: carry_mb); above it the waves run each model from
# its inputs again (slower, no memory held).
CARRY_BYTES = 2 << 30


@dataclass(frozen=True)
class Collected:
    """Statistics per weight name, the weights without them (name -> reason), and the time taken."""

    stats: dict[str, WeightStats]
    unsupported: dict[str, str]
    seconds: float
    samples: int


def collect_stats(state: CompressionState, samples: Samples, batch_size: int = 64,
                  full_max_dim: int = FULL_HESSIAN_MAX_DIM, threads: int = 0) -> Collected:
    """Run ``samples`` through ``state.model`` (the original weights) and sum each layer's input statistics."""
    start = time.perf_counter()
    collector = Collector(state, samples, batch_size, full_max_dim, threads)
    stats = collector.collect()
    return Collected(stats, collector.unsupported, time.perf_counter() - start, len(samples))


class Collector:
    """Input statistics of a state's planned layers, from the original model alone or paired.

    ``collect()`` measures the original model (``state.model`` with the original weights).
    ``collect(names, current)`` measures the named layers' inputs in ``current`` (the model
    with some layers already compressed) paired with the original model's inputs at the same
    rows: the sequential statistics of :mod:`onnx_dc.passes.stats`. :meth:`waves` orders the
    layers so that every layer upstream of a wave is in an earlier wave.
    """

    def __init__(self, state: CompressionState, samples: Samples, batch_size: int = 64,
                 full_max_dim: int = FULL_HESSIAN_MAX_DIM, threads: int = 0, carry_bytes: int | None = None) -> None:
        state.keep_originals()
        self.state, self.samples, self.batch_size = state, samples, batch_size
        self.full_max_dim, self.threads = full_max_dim, threads
        self.graph_inputs = {i.name for i in state.model.graph.input}
        # the model the collection runs: state.model, or a copy with the If nodes the samples always
        # take one way replaced by that branch, when a weight is read inside one (its nodes; the
        # initializers, which bias correction changes, always come from state.model)
        sites = {name: layer.entry.site for name, layer in state.layers.items()}
        self.model, dropped = _inline_constant_ifs(state.model, {c.node for s in sites.values() for c in s.consumers},
                                                   samples, batch_size, threads)
        self.views: dict[str, list[LayerView]] = {}
        self.unsupported: dict[str, str] = {}
        for name, site in sites.items():
            taken = tuple(c for c in site.consumers if c.node not in dropped)
            found, why = layer_views(self.model, dataclasses.replace(site, consumers=taken)) if taken else (
                [], "read only inside If branches the calibration samples do not take")
            if found:
                self.views[name] = found
            else:
                self.unsupported[name] = why
        self._reference: InferenceSession | None = None
        # bias correction rewrites biases in state.model as waves go: the reference keeps the originals
        biases = {v.bias for vs in self.views.values() for v in vs if v.bias}
        self._biases = {t.name: _copy(t) for t in state.model.graph.initializer if t.name in biases}
        # recurrent nodes whose Y the collection models name (node -> tensor)
        self._expose = {v.node: v.activation for vs in self.views.values() for v in vs
                        if v.recurrent is not None and v.recurrent.expose}
        self.carry_bytes = CARRY_BYTES if carry_bytes is None else carry_bytes
        self._carries: tuple[_Carry, _Carry] | None = None  # reference, measured (collect with carry=True)
        self.nodes_run = 0  # nodes the waves' models ran, both models summed (each once per sample)

    def _activations(self, names) -> list[str]:
        return sorted({t for n in names for v in self.views[n] for t in v.tensors} - self.graph_inputs)

    def reference(self) -> InferenceSession:
        """A session of the original model with every measured layer input as an output (made once)."""
        if self._reference is None:
            self._reference = InferenceSession(_with_outputs(self.model, self._activations(self.views),
                                                             self._biases, self._expose), threads=self.threads,
                                               spin=False)
        return self._reference

    def waves(self) -> list[list[str]]:
        """The measured layers in waves: a layer's wave is one more than the latest wave upstream of its inputs."""
        names = list(self.views)
        alias = _aliases(self.model.graph, self._expose)  # an exposed Y has its node's other outputs' upstream
        acts = sorted({alias.get(t, t) for n in names for v in self.views[n] for t in v.tensors})
        upstream = weights_upstream(self.model.graph, names, acts)
        depth: dict[str, int] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = 0  # a weight that reaches its own input (never in a sorted graph) ends here
                above = {u for v in self.views[name] for t in v.tensors for u in upstream[alias.get(t, t)]} - {name}
                depth[name] = 1 + max((depth_of(u) for u in above), default=-1)
            return depth[name]

        out: list[list[str]] = [[] for _ in range(1 + max((depth_of(n) for n in names), default=-1))]
        for name in names:
            out[depth_of(name)].append(name)
        return out

    def collect(self, names: list[str] | None = None, current: Mapping[str, np.ndarray] | None = None,
                carry: bool = False) -> dict[str, WeightStats]:
        """Statistics of the named layers (all measurable ones by default); paired when ``current`` is given.

        ``current``: the present values of planned weights (name -> array); the measured model is
        ``state.model`` (its biases as bias correction left them) with these in place, beside the
        original. Both are cut down to the nodes the wave's inputs need and the initializers those read.
        ``carry``: the calls come wave by wave in the order of :meth:`waves`, and between calls only the
        layers measured so far change; each call then runs only the nodes no earlier call ran (:class:`_Carry`).
        """
        names = [n for n in (self.views if names is None else names) if n in self.views]
        views = {n: self.views[n] for n in names}
        paired = current is not None
        per_view = {(n, i): InputStats(v.groups, v.cols, v.cols <= self.full_max_dim, paired)
                    for n, vs in views.items() for i, v in enumerate(vs)}
        wanted = self._activations(names)
        runs = []  # (carry, step, session) of the reference, then of the measured model
        if wanted and not paired:
            runs.append((None, None, self.reference()))
        elif wanted:  # a wave
            if not carry or self._carries is None:
                limit = self.carry_bytes // 2 if carry else 0
                self._carries = (_Carry(self.model, self._expose, limit), _Carry(self.model, self._expose, limit))
            changed = set(names) | {v.bias for n in names for v in self.views[n] if v.bias}  # after the wave
            for c, replace, changing in zip(self._carries, (self._biases, current), (set(), changed)):
                step = c.step(self.state.model, wanted, replace, self._expose, changing)
                session = None if step.model is None else InferenceSession(step.model, threads=self.threads, spin=False)
                runs.append((c, step, session))
                self.nodes_run += step.nodes
        # Small batches (models with a fixed batch of 1) are pooled before the sums: one large
        # product x^T x runs far faster than many small ones.
        pending: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]] = []
        # One generator per view, seeded by its weight's name: a layer's statistics do not depend on
        # which other layers are measured in the same run (a sweep collects all, compress maybe one).
        rngs = {key: np.random.default_rng([zlib.crc32(key[0].encode()), key[1]]) for key in per_view}
        for b, feed in enumerate(self.samples.batches(self.batch_size)):
            inputs = {k: v for k, v in feed.items() if k in self.graph_inputs}
            outs = []
            for c, step, session in runs:
                got = dict(zip(wanted, session.run(wanted, feed))) if c is None else c.run(step, session, b, feed)
                got.update(inputs)
                outs.append(got)
            if not outs:
                outs = [dict(inputs)] * (1 + paired)
            pending.append((outs[-1], outs[0] if paired else None))
            if sum(a.size for a in outs[0].values()) * len(pending) * (1 + paired) >= _CHUNK_ELEMENTS:
                _flush(pending, views, per_view, rngs)
        _flush(pending, views, per_view, rngs)
        for c, step, _ in runs:
            if c is not None:
                c.commit(step)
        stats = {}
        for name, vs in views.items():
            distinct: list[tuple[LayerView, InputStats]] = []  # consumers reading the same view pool their sums
            for i, v in enumerate(vs):
                same = next((d for d in distinct if np.array_equal(v.index, d[0].index) and v.groups == d[0].groups),
                            None)
                if same is None:
                    distinct.append((v, per_view[(name, i)]))
                else:
                    same[1].merge(per_view[(name, i)])
            parts = tuple(WeightStats(v, st, (v,)) for v, st in distinct) if len(distinct) > 1 else ()
            stats[name] = WeightStats(distinct[0][0], distinct[0][1], tuple(vs), parts)
        return stats


MAX_INLINE_ROUNDS = 8  # nested If nodes reach the top one level per round


def _inline_constant_ifs(model: onnx.ModelProto, consumers: set[str], samples: Samples, batch_size: int,
                         threads: int) -> tuple[onnx.ModelProto, set[str]]:
    """``model``, or a copy whose top-level ``If`` nodes holding a node of ``consumers`` (in a branch, at any
    depth) are replaced by the branch every sample takes (nested ones too, level by level), and the names
    of the nodes in the branches not taken. An ``If`` whose condition differs between samples stays."""
    flat, dropped = model, set()
    for _ in range(MAX_INLINE_ROUNDS):
        ifs = [n for n in flat.graph.node if n.op_type == "If"
               and any(inner.name in consumers for sub in node_subgraphs(n) for inner in all_nodes(sub))]
        if not ifs:
            break
        conds = sorted({n.input[0] for n in ifs} - {t.name for t in flat.graph.initializer})
        seen: dict[str, set[bool]] = {c: set() for c in conds}
        if conds:
            session = InferenceSession(cut_model(flat, conds, {}), threads=threads, spin=False)
            names = [i.name for i in session.get_inputs()]
            for feed in samples.batches(batch_size):
                for c, v in zip(conds, session.run(conds, {k: feed[k] for k in names if k in feed})):
                    seen[c].update(bool(x) for x in np.asarray(v).ravel())
        inits = {t.name: t for t in flat.graph.initializer}
        for n in ifs:
            if n.input[0] in inits:
                seen[n.input[0]] = {bool(x) for x in numpy_helper.to_array(inits[n.input[0]]).ravel()}
        taken = {n.name: next(iter(seen[n.input[0]])) for n in ifs if len(seen[n.input[0]]) == 1}
        if not taken:
            break
        if flat is model:
            flat = onnx.ModelProto()
            flat.CopyFrom(model)
        dropped |= inline_if(flat.graph, taken)
    return flat, dropped


def _flush(pending, views, per_view, rngs: dict) -> None:
    """Fold the pooled batches (``(measured, reference or None)`` outputs) into the sums; token inputs
    ([batch, sequence, hidden]) count at the real tokens only (the feed's attention mask)."""
    if not pending:
        return
    for (name, i), st in per_view.items():
        view = views[name][i]
        if view.recurrent is not None:  # per batch: pooling would join sequences along the step axis
            for outs, ref in pending:
                _accumulate_recurrent(view, st, outs, ref)
            continue
        if view.lookup:
            for outs, _ in pending:  # the indices do not depend on compressed weights: no reference needed
                _accumulate_lookup(st, np.asarray(outs[view.activation]), token_mask(outs))
            continue
        parts, refs = [], []
        for outs, ref in pending:
            mask = token_mask(outs) if not view.trans_a and view.conv is None else None
            parts.append(real_tokens(np.asarray(outs[view.activation]), mask))
            refs.append(None if ref is None else real_tokens(np.asarray(ref[view.activation]), mask))
        if view.trans_a:
            for part, ref in zip(parts, refs):
                _accumulate(view, st, part, rngs[(name, i)], ref)
        elif len(parts) == 1:
            _accumulate(view, st, parts[0], rngs[(name, i)], refs[0])
        else:
            _accumulate(view, st, np.concatenate(parts), rngs[(name, i)],
                        None if refs[0] is None else np.concatenate(refs))
    pending.clear()


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    return out


def _aliases(graph: onnx.GraphProto, expose: Mapping[str, str]) -> dict[str, str]:
    """Exposed ``Y`` name -> an output the node already has (the same nodes compute both)."""
    if not expose:
        return {}
    return {expose[n.name]: next(o for o in n.output if o) for n in graph.node if n.name in expose}


def _expose_outputs(nodes, expose: Mapping[str, str]) -> None:
    """Name the ``Y`` output (output 0) of the recurrent nodes in ``expose`` (node -> tensor), in place."""
    for node in nodes:  # such a node has Y_h or Y_c (layer_views refuses one without outputs)
        if node.name in expose:
            node.output[0] = expose[node.name]


def _with_outputs(model: onnx.ModelProto, names: list[str], replace: dict[str, onnx.TensorProto],
                  expose: Mapping[str, str]) -> bytes:
    """A copy of ``model`` with ``names`` as extra outputs and ``replace``'s initializers in place of its own;
    ``expose``: recurrent nodes whose unnamed ``Y`` output gets a name (node -> tensor)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _expose_outputs(out.graph.node, expose)
    for init in out.graph.initializer:
        if init.name in replace:
            init.CopyFrom(replace[init.name])
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names if name not in have)
    return serialize(out)


def cut_model(model: onnx.ModelProto, names: list[str], replace: Mapping[str, onnx.TensorProto | np.ndarray],
              expose: Mapping[str, str] | None = None) -> bytes:
    """``model`` cut down to the nodes that compute ``names`` (its only outputs) and the initializers they read.

    onnxruntime runs every node whatever outputs are asked for, and a session loads every
    initializer: an early wave of a large model needs a small part of both. ``replace``: values
    (tensors or arrays) to put in place of initializers of the same name. Every graph input that
    is not an initializer stays, so the same feeds run it. ``expose``: recurrent nodes whose
    unnamed ``Y`` output gets a name (node -> tensor).
    """
    graph = model.graph
    alias = _aliases(graph, expose or {})
    nodes = [graph.node[i] for i in needed_nodes(graph, [alias.get(n, n) for n in names])]
    return _part_model(model, nodes, names, replace, expose or {}, {}, keep_inputs=True)


def _part_model(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str],
                replace: Mapping[str, onnx.TensorProto | np.ndarray], expose: Mapping[str, str],
                fed: Mapping[str, int], keep_inputs: bool = False) -> bytes:
    """A model of ``nodes`` (of ``model``'s graph, in its order) with ``outputs``, the initializers they read
    (``replace``'s values in place of their own), the graph inputs they read (all that are not
    initializers with ``keep_inputs``), and ``fed``: tensors made by other nodes, fed as inputs (name -> element type)."""
    graph = model.graph
    read = set().union(*(reads(n) for n in nodes)) | set(outputs)
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = graph.name
    g.node.extend(nodes)
    _expose_outputs(g.node, expose)
    for init in graph.initializer:
        if init.name not in read:
            continue
        value = replace.get(init.name, init)
        if not isinstance(value, onnx.TensorProto):
            value = numpy_helper.from_array(value, init.name)
        g.initializer.append(value)
        if external.is_external(g.initializer[-1]):
            external.embed(g.initializer[-1])
    g.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in read)
    stored = {t.name for t in graph.initializer}
    g.input.extend(i for i in graph.input if i.name in read or (keep_inputs and i.name not in stored))
    g.input.extend(onnx.helper.make_tensor_value_info(name, elem, None) for name, elem in sorted(fed.items()))
    g.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    return serialize(out)


@dataclass(frozen=True)
class _Step:
    """One wave of a :class:`_Carry`: the nodes it runs and what goes in and out."""

    model: bytes | None  # None: every wanted tensor is carried already
    inputs: tuple[str, ...]  # graph inputs fed from the samples
    fed: tuple[str, ...]  # carried tensors fed as inputs
    outputs: tuple[str, ...]
    wanted: tuple[str, ...]
    done: frozenset[int]  # nodes whose outputs stay valid after the wave
    live: frozenset[str]  # tensors to carry after the wave: read by a node not in ``done``
    nodes: int = 0  # how many nodes the part runs


class _Carry:
    """One model's activations on every batch of samples, carried from wave to wave.

    Without it each wave runs its model from the graph inputs up to the wave's layer inputs,
    so a deep model's early nodes run once per wave. With it each wave runs only the nodes no
    earlier wave ran, fed the tensors they read from what the earlier waves kept: every node
    runs about once. A node's outputs stay valid while the weights it reads do not change; in
    wave order only the measured layers change, after their wave, and a node that reads one of
    them and already ran (a recurrent node upstream of its own ``R`` input, a weight shared by
    two nodes) runs again later, with its downstream. Kept tensors are those a node not run yet
    reads. A wave whose tensors would pass ``limit`` bytes keeps none: the next wave runs from the
    graph inputs and carries from there (deeper waves usually carry fewer, smaller tensors).
    """

    def __init__(self, model: onnx.ModelProto, expose: Mapping[str, str], limit: int) -> None:
        self.graph = onnx.GraphProto()
        self.graph.node.extend(model.graph.node)
        _expose_outputs(self.graph.node, expose)
        self.reads = [reads(n) for n in self.graph.node]
        self.producer = {o: i for i, n in enumerate(self.graph.node) for o in n.output if o}
        self.limit = limit
        self.on = limit > 0
        self.overflow = False  # this wave's tensors went past the limit: keep no more of them
        self.nbytes = 0
        self.done: frozenset[int] = frozenset()
        self.values: list[dict[str, np.ndarray]] = []

    def step(self, model: onnx.ModelProto, wanted: list[str], replace, expose: Mapping[str, str],
             changing: set[str]) -> _Step:
        """The part of ``model`` this wave runs; ``changing``: weights that change after the wave."""
        nodes = self.graph.node
        carried = set(self.values[0]) if self.values else set()
        new = self._to_run(wanted, carried)
        done = set(self.done) | set(new)
        made: set[str] = set()
        for i in sorted(done):  # stored order is topological: staleness flows down
            if self.reads[i] & (changing | made):
                done.discard(i)
                made.update(o for o in nodes[i].output if o)
        live = set()
        if self.on:
            live = set().union(*(self.reads[i] for i in range(len(nodes)) if i not in done)) - made
        produced = {o for i in new for o in nodes[i].output if o}
        outputs = sorted(t for t in produced if t in live or t in wanted)
        outputs += sorted(t for t in wanted if t not in produced and t not in carried and t not in outputs)
        fed = sorted(set().union(*(self.reads[i] for i in new)) & carried) if new else []
        if not outputs:
            return _Step(None, (), (), (), tuple(wanted), frozenset(done), frozenset(live))
        types = {n: onnx.helper.np_dtype_to_tensor_dtype(self.values[0][n].dtype) for n in fed}
        part = _part_model(model, [nodes[i] for i in new], outputs, replace, expose, types)
        proto_inputs = {i.name for i in model.graph.input}
        inputs = sorted(t for t in set().union(*(self.reads[i] for i in new), outputs) if t in proto_inputs
                        and t not in types)
        return _Step(part, tuple(inputs), tuple(fed), tuple(outputs), tuple(wanted), frozenset(done), frozenset(live),
                     len(new))

    def _to_run(self, wanted: list[str], carried: set[str]) -> list[int]:
        """Nodes (stored order) that compute ``wanted`` from the carried tensors and the graph's inputs."""
        todo = [t for t in wanted if t not in carried]
        run: set[int] = set()
        while todo:
            i = self.producer.get(todo.pop())
            if i is not None and i not in run:
                run.add(i)
                todo.extend(t for t in self.reads[i] if t not in carried)
        return sorted(run)

    def run(self, step: _Step, session: InferenceSession | None, b: int, feed: Mapping[str, np.ndarray]) -> dict:
        """The wanted tensors of batch ``b`` (``feed``), keeping what later waves read while it fits the limit."""
        carried = self.values[b] if b < len(self.values) else {}
        got = {}
        if session is not None:
            inputs = {k: feed[k] for k in step.inputs if k in feed}
            inputs.update((k, carried[k]) for k in step.fed)
            got = dict(zip(step.outputs, session.run(list(step.outputs), inputs)))
        if self.on and not self.overflow:
            keep = {k: v for k, v in got.items() if k in step.live}
            if not all(isinstance(v, np.ndarray) for v in keep.values()):  # a sequence or map: not fed back
                self.on = False
            else:
                size = sum(v.nbytes for v in keep.values())
                self.overflow = self.nbytes + size > self.limit
                if not self.overflow:
                    self.nbytes += size
                    if b < len(self.values):
                        self.values[b].update(keep)
                    else:
                        self.values.append(keep)
        return {w: got[w] if w in got else carried[w] for w in step.wanted}

    def commit(self, step: _Step) -> None:
        """After the wave: drop what no later node reads. When the wave's tensors did not fit (or could not be
        carried), drop everything: the next wave runs from the graph inputs and carries from there."""
        if not self.on or self.overflow:
            self.done, self.values, self.nbytes, self.overflow = frozenset(), [], 0, False
            return
        self.done = step.done
        for values in self.values:
            for k in [k for k in values if k not in step.live]:
                del values[k]
        self.nbytes = sum(v.nbytes for values in self.values for v in values.values())


def _accumulate(view: LayerView, stats: InputStats, x: np.ndarray, rng: np.random.Generator,
                reference: np.ndarray | None = None) -> None:
    """Add the input rows of ``x`` (and of ``reference``, the original model's input, at the same rows)."""
    if view.conv is None:
        def as_rows(a):
            return a.reshape(-1, a.shape[-1]) if not view.trans_a else a.reshape(a.shape[0], -1).T

        rows = as_rows(x)
        ref_rows = None if reference is None else as_rows(reference)
        step = max(1, _CHUNK_ELEMENTS // max(1, view.cols))
        for s in range(0, rows.shape[0], step):
            stats.add(0, rows[s : s + step], None if ref_rows is None else ref_rows[s : s + step])
        return
    geo = view.conv
    if any(s > 1 for s in geo.upsample):
        x = zero_insert(x, geo.upsample)
        reference = None if reference is None else zero_insert(reference, geo.upsample)
    pads = same_pads(x.shape[2:], geo) if geo.auto_pad.startswith("SAME") else geo.pads
    step = max(1, _CHUNK_ELEMENTS // max(1, view.cols * view.groups * MAX_POSITIONS))
    for s in range(0, x.shape[0], step):
        twin = copy.deepcopy(rng)  # the reference's patches at the same positions
        patches = im2col(x[s : s + step], geo.kernel, geo.strides, geo.dilations, pads, MAX_POSITIONS, rng)
        ref = None
        if reference is not None:
            ref = im2col(reference[s : s + step], geo.kernel, geo.strides, geo.dilations, pads, MAX_POSITIONS, twin)
            ref = ref.reshape(-1, view.groups, view.cols)
        # [n, P, C, *kernel] -> rows [n * P, groups, Cg * prod(kernel)]
        stats.add_groups(patches.reshape(-1, view.groups, view.cols), ref)


def _accumulate_lookup(stats: InputStats, indices: np.ndarray, mask: np.ndarray | None) -> None:
    """Count each table row's index among the real tokens: the one-hot rows' sums and squares are both the counts.

    Indices of the mask's [batch, sequence] shape, or broadcasting to it (position ids ``[1, sequence]``),
    count where the mask marks a token; other indices all count. Negative indices count from the end.
    """
    if mask is not None and indices.ndim == mask.ndim:
        try:
            indices = np.broadcast_to(indices, np.broadcast_shapes(indices.shape, mask.shape))[
                np.broadcast_to(mask, np.broadcast_shapes(indices.shape, mask.shape)) != 0]
        except ValueError:  # shapes that do not broadcast: not the mask's tokens
            pass
    flat = indices.astype(np.int64, copy=False).ravel()
    flat = np.where(flat < 0, flat + stats.dim, flat)
    counts = np.bincount(flat[(flat >= 0) & (flat < stats.dim)], minlength=stats.dim).astype(np.float64)
    stats.total[0] += counts
    stats.squares[0] += counts
    diagonal = np.arange(stats.dim)
    for sums in (stats.total_ref, stats.gram, stats.cross):  # one-hot rows: x x^T is diagonal, x_o = x
        if sums is not None and sums.ndim == 3:
            sums[0, diagonal, diagonal] += counts
        elif sums is not None:
            sums[0] += counts
    stats.count += flat.size


def _accumulate_recurrent(view: LayerView, stats: InputStats, outs: dict, reference: dict | None) -> None:
    rows = recurrent_rows(view, outs)
    ref = None if reference is None else recurrent_rows(view, reference)
    step = max(1, _CHUNK_ELEMENTS // max(1, view.cols * view.groups))
    for s in range(0, rows.shape[0], step):
        stats.add_groups(rows[s : s + step], None if ref is None else ref[s : s + step])


def recurrent_rows(view: LayerView, outs: dict) -> np.ndarray:
    """Input rows ``[steps * batch, D, in]`` of a GRU / LSTM / RNN weight, one group per direction.

    ``W`` reads ``x_t`` (the same for every direction). ``R`` of direction ``d`` reads
    ``h_{t-1}``: ``Y[t - 1, d]`` for a forward direction, ``Y[t + 1, d]`` for a reverse one,
    and ``initial_h[d]`` (zeros when the node has none) at the direction's first step.
    """
    rec = view.recurrent
    a = np.asarray(outs[view.activation], np.float32)
    dirs = view.groups
    if rec.reads == "x":
        rows = a.reshape(-1, a.shape[-1])
        return np.broadcast_to(rows[:, None, :], (rows.shape[0], dirs, rows.shape[1]))
    y = a  # Y: [seq, D, batch, H]
    seq, _, batch, hidden = y.shape
    if rec.initial is not None:
        h0 = np.asarray(outs[rec.initial], np.float32)
    elif rec.initial_value is not None:
        h0 = rec.initial_value
    else:
        h0 = np.zeros((dirs, batch, hidden), np.float32)
    h0 = np.broadcast_to(h0, (dirs, batch, hidden))
    prev = np.empty_like(y)
    for d in range(dirs):
        if rec.reverse[d]:
            prev[:-1, d], prev[-1, d] = y[1:, d], h0[d]
        else:
            prev[1:, d], prev[0, d] = y[:-1, d], h0[d]
    return prev.transpose(0, 2, 1, 3).reshape(seq * batch, dirs, hidden)


def zero_insert(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """``x`` ``[N, C, *spatial]`` with ``s - 1`` zeros after every element of each spatial axis (ConvTranspose's input
    as its equivalent Conv reads it)."""
    shape = x.shape[:2] + tuple(d * s for d, s in zip(x.shape[2:], factors))
    out = np.zeros(shape, x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in factors)] = x
    return out


def same_pads(spatial_shape, geo) -> tuple[int, ...]:
    """Explicit pads of ``auto_pad`` SAME_UPPER / SAME_LOWER for an input of ``spatial_shape``."""
    begin, end = [], []
    for size, k, s, d in zip(spatial_shape, geo.kernel, geo.strides, geo.dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if geo.auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return tuple(begin + end)


def im2col(x: np.ndarray, kernel, strides, dilations, pads, max_positions: int | None = None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Patches ``[N, P, C, *kernel]`` of ``x`` ``[N, C, *spatial]`` as a Conv with these attributes reads them.

    ``P`` is every output position in order, or ``max_positions`` of them drawn by ``rng``
    (the same for every sample of the call) when there are more.
    """
    spatial = len(kernel)
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
    xp = np.pad(x, pad_width) if any(pads) else x
    window = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = sliding_window_view(xp, window, axis=tuple(range(2, 2 + spatial)))
    pos = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    v = v[pos + tuple(slice(None, None, d) for d in dilations)]  # [N, C, *out, *kernel], a view
    out_shape = v.shape[2 : 2 + spatial]
    n_pos = int(np.prod(out_shape))
    if max_positions is not None and n_pos > max_positions:
        flat = np.sort((rng or np.random.default_rng(0)).choice(n_pos, max_positions, replace=False))
    else:
        flat = np.arange(n_pos)
    coords = np.unravel_index(flat, out_shape)
    picked = v[(slice(None), slice(None)) + coords]  # [N, C, P, *kernel]
    return np.ascontiguousarray(np.moveaxis(picked, 2, 1))


def stats_summary(collected: Collected) -> str:
    """One line: layers measured, samples, seconds."""
    return (f"input statistics of {len(collected.stats)} layer(s) from {collected.samples} sample(s) in "
            f"{collected.seconds:.1f} s" + (f"; {len(collected.unsupported)} layer(s) without: "
                                           f"{', '.join(f'{k} ({v})' for k, v in list(collected.unsupported.items())[:3])}"
                                           if collected.unsupported else ""))


__all__ = ["Collected", "Collector", "collect_stats", "cut_model", "im2col", "recurrent_rows", "stats_summary",
           "zero_insert", "FULL_HESSIAN_MAX_DIM"]
