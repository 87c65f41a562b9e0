"""onnxruntime-training's gradient graph: building it, and naming the op and node when it cannot be built.

:func:`build` generates the training artifacts of a training graph and opens its module.
When either step fails, the message names the op and node: from onnxruntime's own text where it
names them (an op without a gradient builder, a gradient op without a CPU kernel, a kernel that
refuses an attribute), else by building the gradient of each node on the trained path alone
(:func:`blocking_node`): the node's float inputs on that path become ``input * p`` with ``p`` a
trained scalar, its other inputs keep their values (initializers, Constant nodes) or become graph
inputs of their inferred types, and its float outputs are summed into the loss. The first node
whose own gradient fails is the one named; a C++ signature is never shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper
from onnx.checker import ValidationError
from onnx.shape_inference import InferenceError

from onnx_dc.graph.io import MAX_IR_VERSION
from onnx_dc.graph.walk import needed_nodes, reads
from onnx_dc.runtime.ort import onnxruntime_errors
from onnx_dc.train.ort_training import training_modules

MAX_PROBES = 200  # distinct node kinds built alone before giving up on naming one

# onnxruntime-training 1.19's message for an op without a registered gradient builder.
_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\S+) for node (\S+)")
# ... and for a gradient op that exists but has no CPU kernel ("ResizeGrad" for a node "Resize_7_Grad/...").
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+?)Grad\(\d+\) node with name '([^'/]+?)_Grad/")
# ... and for a kernel that refuses the op's attributes ("LSTM and LSTMGrad only support ...").
_UNSUPPORTED_ATTR = re.compile(r"(\w+) and \w+Grad only support ([^\n]*?)\.?\s*$", re.M)
# ... and the recurrent kernels' "GRUTraining and GRUGrad kernel only supports the forward direction for now."
_UNSUPPORTED_KERNEL = re.compile(r"(\w+?)Training and \w+Grad kernel only supports ([^.\n]*)")
# C++ source positions and signatures in onnxruntime's messages
_SOURCE = re.compile(r"/onnxruntime_src/\S*?([\w.]+:\d+)\s")
_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")


def silence_ort() -> None:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


@contextlib.contextmanager
def quiet_stderr():
    """Hide the native INFO lines onnxruntime-training's graph builder prints on fd 2.

    Its sessions log at INFO whatever the default severity; errors still arrive as exceptions.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_errors() -> tuple[type[Exception], ...]:
    """How onnxruntime-training refuses a graph it cannot differentiate.

    Its gradient builder and its Python side raise RuntimeError, onnxruntime's status types
    come from its sessions, and it checks and shape-infers the training graph with onnx's
    checker; a failed lookup in its C++ graph optimizer arrives as IndexError ("unordered_map::at",
    on a graph where an op's input is missing). Anything else is not the model's fault.
    """
    return (RuntimeError, IndexError, ValidationError, InferenceError, *onnxruntime_errors())


class GradientBuildError(Exception):
    """onnxruntime-training could not build or open the gradient graph (``cause``: its exception)."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


def build(model: onnx.ModelProto, requires_grad: list[str], frozen: list[str], folder: Path, threads: int = 0):
    """Generate the training artifacts of ``model`` (its loss already in the graph) in ``folder`` and
    open them; returns ``(checkpoint, module)``.

    Raises:
        GradientBuildError: when onnxruntime-training refuses the graph.
    """
    artifacts, api = training_modules()
    silence_ort()
    try:
        with quiet_stderr():
            artifacts.generate_artifacts(model, requires_grad=requires_grad, frozen_params=frozen, loss=None,
                                         optimizer=None, artifact_directory=folder)
    except build_errors() as exc:
        raise GradientBuildError(exc) from None
    for path in folder.glob("*.onnx"):
        # generate_artifacts writes at the installed onnx's IR version; ORT 1.19 reads <= 10.
        proto = onnx.load(path)
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, path)
    options = None
    if threads:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
    checkpoint = api.CheckpointState.load_checkpoint(os.fspath(folder / "checkpoint"))
    try:
        with quiet_stderr():
            module = api.Module(os.fspath(folder / "training_model.onnx"), checkpoint,
                                os.fspath(folder / "eval_model.onnx"), session_options=options)
    except (RuntimeError, *onnxruntime_errors()) as exc:  # a gradient op without a CPU kernel fails only here
        raise GradientBuildError(exc) from None
    return checkpoint, module


def named_failure(exc: Exception) -> str | None:
    """One line naming the op (and node) where onnxruntime's own message does; None where it does not."""
    text = str(exc).strip()
    found = _NO_GRADIENT.search(text)
    if found:
        return f"onnxruntime-training has no gradient for op {found.group(1)} (node {found.group(2)})"
    found = _NO_KERNEL.search(text)
    if found:
        return f"onnxruntime-training has no CPU gradient kernel for op {found.group(1)} (node {found.group(2)})"
    found = _UNSUPPORTED_ATTR.search(text) or _UNSUPPORTED_KERNEL.search(text)
    if found:
        return f"onnxruntime-training's gradient of op {found.group(1)} only supports {found.group(2).strip()}"
    return None


def plain(exc: Exception, limit: int = 200) -> str:
    """onnxruntime's message on one line, without C++ signatures: the text after its status code, or after
    a failed check ("<file>:<line> <function> <condition> was false. <message>"), or where the check is."""
    text = " ".join(str(exc).split())
    status = list(_STATUS.finditer(text))
    if status:
        text = text[status[-1].end():]
    source = _SOURCE.search(text)
    if source:
        where = source.group(1)
        after = text.split(" was false.", 1)
        text = after[1].strip() if len(after) == 2 and after[1].strip() else f"an internal check failed at {where}"
    text = text.strip()
    return (text[:limit] + "...") if len(text) > limit else (text or type(exc).__name__)


def gradient_failure(exc: Exception) -> str:
    """One line on why the gradient graph could not be built, from onnxruntime's message alone."""
    return named_failure(exc) or f"onnxruntime-training cannot build the gradient graph ({plain(exc)})"


def reaching(graph: onnx.GraphProto, output: str) -> set[str]:
    """The tensors ``output`` depends on (through subgraphs' outer-scope reads too)."""
    return {output} | {name for i in needed_nodes(graph, [output]) for name in reads(graph.node[i])}


def types_of(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The type of every tensor of ``model`` that shape inference (or the model) gives."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (InferenceError, ValidationError):
        inferred = model
    g = inferred.graph
    out = {v.name: v.type for v in [*g.input, *g.value_info, *g.output]}
    out.update({t.name: oh.make_tensor_type_proto(t.data_type, list(t.dims)) for t in g.initializer})
    return out


def _probe_model(model: onnx.ModelProto, node: onnx.NodeProto, on_path: set[str], types: dict,
                 constants: dict[str, onnx.TensorProto]) -> tuple[onnx.ModelProto, list[str], list[str]] | str | None:
    """``node`` alone, its float inputs on the trained path scaled by trained scalars, its float outputs
    summed into the loss; None when nothing of it can be trained, "unknown" when an input's type is not known."""
    nodes, inputs, inits, trained, frozen = [], [], [], [], []
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    for i, name in enumerate(node.input):
        if not name:
            continue
        tensor_type = types.get(name)
        if name in constants:
            t = onnx.TensorProto()
            t.CopyFrom(constants[name])
            t.name = name
            inits.append(t)
            (trained if name in on_path and t.data_type == TensorProto.FLOAT else frozen).append(name)
            continue
        if tensor_type is None or not tensor_type.HasField("tensor_type") or not tensor_type.tensor_type.HasField("shape"):
            return "unknown"
        feed = f"probe/in{i}"
        inputs.append(oh.make_value_info(feed, tensor_type))
        if name in on_path and tensor_type.tensor_type.elem_type == TensorProto.FLOAT:
            scale = f"probe/p{i}"
            inits.append(numpy_helper.from_array(np.ones((), np.float32), scale))
            trained.append(scale)
            nodes.append(oh.make_node("Mul", [feed, scale], [f"probe/x{i}"], name=f"probe/scale{i}"))
            probe.input[i] = f"probe/x{i}"
        else:
            probe.input[i] = feed
    floats = [o for o in node.output if o and types.get(o) is not None
              and types[o].tensor_type.elem_type == TensorProto.FLOAT]
    if not trained or not floats:
        return None
    nodes.append(probe)
    total = None
    for k, out in enumerate(floats):
        nodes.append(oh.make_node("ReduceSum", [out], [f"probe/sum{k}"], name=f"probe/sum{k}", keepdims=0))
        if total is None:
            total = f"probe/sum{k}"
        else:
            nodes.append(oh.make_node("Add", [total, f"probe/sum{k}"], [f"probe/total{k}"], name=f"probe/add{k}"))
            total = f"probe/total{k}"
    nodes.append(oh.make_node("Identity", [total], ["probe/loss"], name="probe/loss"))
    graph = oh.make_graph(nodes, "probe", inputs, [oh.make_tensor_value_info("probe/loss", TensorProto.FLOAT, [])], inits)
    out = oh.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    out.ir_version = MAX_IR_VERSION
    return out, trained, frozen


def _kind(node: onnx.NodeProto, types: dict) -> tuple:
    """Nodes of one kind build alike: op, attributes, input element types and ranks."""
    def sig(name: str) -> tuple:
        t = types.get(name)
        if t is None or not t.HasField("tensor_type"):
            return (name,)
        return (t.tensor_type.elem_type, len(t.tensor_type.shape.dim))

    return (node.domain, node.op_type, tuple(a.SerializeToString() for a in node.attribute),
            tuple(sig(i) for i in node.input))


def node_gradient(model: onnx.ModelProto, node: onnx.NodeProto, on_path: set[str], types: dict,
                  constants: dict[str, onnx.TensorProto], rewrite=None) -> tuple[str, str | None]:
    """Build the gradient of ``node`` alone: ``(status, reason)``.

    Status ``gradient``: it builds and its module opens; ``fails``: it does not (``reason``, one line);
    ``stops``: none of its float inputs is on the path, or it has no float output (the gradient stops
    there); ``unknown``: an input's type or rank is not known, so it cannot be built alone.
    ``rewrite``: applied to the one-node model first (the training graph's equivalents).
    """
    probe = _probe_model(model, node, on_path, types, constants)
    if probe is None:
        return "stops", None
    if probe == "unknown":
        return "unknown", None
    one, trained, frozen = probe
    if rewrite is not None:
        rewrite(one)
        reach = reaching(one.graph, "probe/loss")  # a rewrite may leave an input without effect (zero gradient)
        trained = [t for t in trained if t in reach]
        if not trained:
            return "stops", None
    with tempfile.TemporaryDirectory(prefix="onnx_dc_probe_") as folder:
        try:
            build(one, trained, frozen, Path(folder))
        except GradientBuildError as exc:
            return "fails", named_failure(exc.cause) or plain(exc.cause)
    return "gradient", None


def blocking_node(model: onnx.ModelProto, trained: list[str]) -> tuple[onnx.NodeProto, str] | None:
    """The first node on the path from ``trained`` whose gradient cannot be built on its own, and why."""
    graph = model.graph
    types = types_of(model)
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    on_path, seen, probes = set(trained), set(), 0
    for node in graph.node:
        if not on_path.intersection(node.input):
            continue
        on_path.update(o for o in node.output if o)
        kind = _kind(node, types)
        if kind in seen:
            continue
        seen.add(kind)
        probes += 1
        if probes > MAX_PROBES:
            return None
        status, failure = node_gradient(model, node, on_path, types, constants)
        if status == "fails":
            return node, failure
    return None


def explain(exc: Exception, model: onnx.ModelProto, trained: list[str]) -> str:
    """One line on why ``model``'s gradient could not be built, naming the op and node."""
    named = named_failure(exc)
    if named is not None:
        return named
    found = blocking_node(model, trained)
    if found is not None:
        node, why = found
        return f"onnxruntime-training cannot build the gradient of op {node.op_type} (node {node.name}): {why}"
    return f"onnxruntime-training cannot build the gradient graph ({plain(exc)}); no single node fails alone"
