"""Training forms of a compression state: the graph onnxruntime-training differentiates.

Every form appends a loss to the inference graph, by default the labeled one

    loss = mean_n( -log softmax(z_n)[y_n] ),   z = the logits (the input of a final Softmax),

(label-free distillation appends its own, see :mod:`onnx_dc.train.distill`), and the
forms differ in how a planned weight ``W`` enters the graph:

    dense:   W is a trainable parameter.
    masked:  W = P * M with the 0/1 mask M fixed, so dL/dP = dL/dW * M is exactly zero at
             pruned positions and P (zero there) stays zero under any optimizer. P is W's
             own parameter, zero at pruned positions, and the trainer multiplies its gradient
             by M before the step: the same math as a Mul node in the graph, which measured
             2 ms per step slower on LeNet-300-100 (onnxruntime's Mul and its gradient).
    shared:  W = codebook[codes]. The graph keeps W as a parameter only to obtain the dense
             gradient G = dL/dW; the trainer then forms the centroid gradient of Eq. 3,

                 dL/dc_k = sum_{i : codes_i = k} G_i   (np.bincount over the kept weights),

             steps the codebook (entry 0 stays 0.0) and writes W = codebook[codes] back.
             This replaces W = Gather(codebook, codes) in the graph: onnxruntime 1.19's
             Gather forward (4 ms for LeNet-300-100's 235K codes) and GatherGrad (about
             10x the dense step) are far slower than the bincount.

Biases and other float parameters are trainable in every form; parameters come back
into the inference model by name.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.errors import ModelError
from onnx_dc.graph import ops
from onnx_dc.graph.walk import node_subgraphs, reads
from onnx_dc.passes.state import CompressionState
from onnx_dc.train.branches import inline_branches, taken_branches
from onnx_dc.train.equivalents import differentiable_equivalents
from onnx_dc.train.gradients import reaching

LABELS = "onnx_dc_train/labels"
LOSS = "onnx_dc_train/loss"


class TrainForm(str, enum.Enum):
    """How planned weights are trained (see the module docstring)."""

    DENSE = "dense"
    MASKED = "masked"
    SHARED = "shared"


@dataclass
class LayerBinding:
    """Where one planned weight lives in the training graph."""

    weight: str
    parameter: str  # checkpoint parameter carrying W
    kind: str  # "dense", "masked" or "shared"


@dataclass
class TrainingGraph:
    """The forward + loss model and which of its initializers train."""

    model: onnx.ModelProto
    layers: dict[str, LayerBinding] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)  # biases and other float parameters
    frozen: list[str] = field(default_factory=list)  # parameters kept in the checkpoint without gradients

    @property
    def requires_grad(self) -> list[str]:
        """Parameters onnxruntime computes gradients for."""
        return [b.parameter for b in self.layers.values()] + self.others


def model_input(model: onnx.ModelProto, name: str = "model") -> tuple[str, tuple[int, ...] | None]:
    """The data input's name and per-sample shape; refuses a fixed batch size.

    Raises:
        ModelError: when the model has no data input or fixes its batch size.
    """
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{name}: fine-tuning needs exactly one data input, found {len(inputs)}")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if not dims:
        raise ModelError(f"{name}: input {inp.name!r} has no shape; fine-tuning needs (batch, ...)")
    if dims[0].HasField("dim_value") and dims[0].dim_value != 0:
        raise ModelError(
            f"{name}: input {inp.name!r} fixes the batch size at {dims[0].dim_value}; fine-tuning needs a free "
            "batch dimension (re-export the model with a dynamic batch axis)"
        )
    rest = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims[1:])
    return inp.name, (None if any(d < 0 for d in rest) else rest)


def _logits(graph: onnx.GraphProto) -> str:
    """The tensor the loss reads: the graph's first output, or the input of a final (Log)Softmax."""
    out = graph.output[0].name
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(out)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.domain in ("", "ai.onnx"):
        readers = [n for n in graph.node if out in n.input]
        if not readers:
            graph.node.remove(node)
        return node.input[0]
    return out


# Appends a loss to a copy of the inference model (in place); the loss output is LOSS.
LossBuilder = Callable[[onnx.ModelProto, str], None]


def cross_entropy_loss(model: onnx.ModelProto, name: str) -> None:
    """Append the labeled loss: softmax cross-entropy of the logits against an int64 ``labels`` input."""
    graph = model.graph
    model_input(model, name)
    logits = _logits(graph)
    del graph.output[:]
    graph.node.extend([
        oh.make_node("Flatten", [logits], ["onnx_dc_train/logits"], axis=1, name="onnx_dc_train/flatten"),
        oh.make_node("SoftmaxCrossEntropyLoss", ["onnx_dc_train/logits", LABELS], [LOSS, "onnx_dc_train/log_prob"],
                     reduction="mean", name="onnx_dc_train/loss"),
    ])
    graph.input.append(oh.make_tensor_value_info(LABELS, TensorProto.INT64, ["batch"]))
    graph.output.append(oh.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))


def build_training_graph(state: CompressionState, form: TrainForm, name: str = "model",
                         loss: LossBuilder = cross_entropy_loss, branches: Mapping[str, bool] | None = None) -> TrainingGraph:
    """The training model of ``state`` (its current weights) in ``form``, with ``loss`` appended; ``If`` nodes
    named in ``branches`` (:func:`onnx_dc.train.branches.taken_branches`) replaced by the branch taken."""
    model = state.dense_model()
    loss(model, name)
    inline_branches(model, branches or {})
    differentiable_equivalents(model)
    graph = model.graph
    result = TrainingGraph(model)
    for wname, layer in state.layers.items():
        if form == TrainForm.SHARED and layer.codebook is not None:
            result.layers[wname] = LayerBinding(wname, wname, "shared")
        elif form != TrainForm.DENSE and layer.mask is not None:
            result.layers[wname] = LayerBinding(wname, wname, "masked")
        else:
            result.layers[wname] = LayerBinding(wname, wname, "dense")
    result.others = _other_parameters(graph, set(state.layers))
    reach = reaching(graph, LOSS)
    # a parameter the loss does not depend on keeps its value (onnxruntime-training refuses its gradient:
    # an LSTM's R unrolled over one step from a zero state, a layer feeding only outputs nobody matches)
    result.layers = {w: b for w, b in result.layers.items() if b.parameter in reach}
    result.others = [o for o in result.others if o in reach]
    _refuse_control_flow(graph, set(result.requires_grad), name)
    return result


def downstream(graph: onnx.GraphProto, sources: set[str]) -> list[tuple[onnx.NodeProto, bool]]:
    """The nodes that read (directly, or from inside a subgraph) a tensor computed from ``sources``.

    Returns:
        ``(node, has_subgraph)`` in graph order (the graph is topologically sorted).
    """
    reached, out = set(sources), []
    for node in graph.node:
        if reached & reads(node):
            out.append((node, any(True for _ in node_subgraphs(node))))
            reached.update(node.output)
    return out


def trained_parameters(graph: onnx.GraphProto, layers: set[str]) -> set[str]:
    """The compressed layers' weights and the other parameters that train with them."""
    return set(layers) | set(_other_parameters(graph, set(layers)))


def branches_on_path(model: onnx.ModelProto, layers: set[str]) -> list[str]:
    """The ``If`` nodes a gradient from the trained parameters would pass through."""
    return [n.name for n, _ in downstream(model.graph, trained_parameters(model.graph, layers)) if n.op_type == "If"]


def taken_on_path(state: CompressionState, feeds, batch_sizes: list[int], name: str = "model",
                  threads: int = 0) -> dict[str, bool]:
    """The branch the samples take at each ``If`` on the training path of ``state``'s model ({} without one).

    ``feeds(batch_size)`` yields the samples' feeds; see :func:`onnx_dc.train.branches.taken_branches`.
    """
    model = state.dense_model()
    if not any(n.op_type == "If" for n in model.graph.node):
        return {}
    return taken_branches(model, feeds, batch_sizes, lambda m: branches_on_path(m, set(state.layers)), name, threads)


def _refuse_control_flow(graph: onnx.GraphProto, parameters: set[str], name: str) -> None:
    """Refuse a path from a trained parameter through If / Loop / Scan.

    onnxruntime-training 1.19's gradient builder aborts the process (a failed C++
    assertion, no exception) on such subgraphs, so they are caught here first.

    Raises:
        ModelError: naming the op and node.
    """
    for node, has_subgraph in downstream(graph, parameters):
        if has_subgraph:
            how = ("; If nodes train where every sample takes the same branch, and no samples decided this one"
                   if node.op_type == "If" else "")
            raise ModelError(f"{name}: onnxruntime-training has no gradient for op {node.op_type} (node {node.name}): "
                             f"it cannot differentiate through control-flow subgraphs{how}")


def _other_parameters(graph: onnx.GraphProto, planned: set[str]) -> list[str]:
    inits = {t.name: t for t in graph.initializer}
    out: list[str] = []
    for node in graph.node:
        spec = ops.of(node)
        if spec is None or not spec.trains_parameters:  # the op table says whose biases and scales train
            continue
        for name in node.input:
            t = inits.get(name)
            if (t is not None and name not in planned and name not in out and t.data_type == TensorProto.FLOAT
                    and len(t.dims) >= 1):
                out.append(name)
    return out
