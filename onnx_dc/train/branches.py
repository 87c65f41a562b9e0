"""``If`` nodes on the training path, replaced by the branch every sample takes.

onnxruntime-training 1.19 cannot differentiate through control-flow subgraphs (its gradient
builder aborts the process). Most ``If`` nodes in exported models test something fixed per
use: a sample rate, whether a state is empty, an input's shape. Where every calibration sample
(one at a time and in training batches) takes the same branch, the training graph holds that
branch's nodes in place of the ``If`` (:func:`onnx_dc.graph.walk.inline_if`, as the statistics
collection does), and ``If`` nodes inside the branch become ordinary nodes, decided the same way
in the next round. Parameters keep their
names, so the trained values return to the unchanged inference model, which keeps its ``If``.

Where the samples take both branches, one line says so (:class:`~onnx_dc.errors.ModelError`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.errors import ModelError
from onnx_dc.graph.walk import inline_if

ROUNDS = 8  # nested If depth decided


def inline_branches(model: onnx.ModelProto, taken: Mapping[str, bool]) -> int:
    """Replace, in place, the top-level ``If`` nodes named in ``taken`` (and those their branches
    expose, round by round) by the branch taken (:func:`onnx_dc.graph.walk.inline_if`); returns how many."""
    count = 0
    for _ in range(ROUNDS):
        now = {n.name: taken[n.name] for n in model.graph.node if n.op_type == "If" and n.name in taken}
        if not now:
            break
        inline_if(model.graph, now)
        count += len(now)
    return count


def _conditions(model: onnx.ModelProto, feeds, batch_sizes: list[int], threads: int,
                names: list[str]) -> dict[str, set[bool]]:
    """The values each If condition took, over every feed."""
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    conds = list(dict.fromkeys(n.input[0] for n in probe.graph.node if n.op_type == "If" and n.name in names))
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(oh.make_tensor_value_info(c, TensorProto.BOOL, None) for c in conds if c not in outputs)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    seen: dict[str, set[bool]] = {c: set() for c in conds}
    for size in batch_sizes:
        for feed in feeds(size):
            for c, value in zip(conds, session.run(conds, feed)):
                seen[c].add(bool(np.asarray(value).reshape(-1)[0]))
    by_node = {n.name: seen[n.input[0]] for n in probe.graph.node if n.op_type == "If" and n.name in names}
    return by_node


def taken_branches(model: onnx.ModelProto, feeds, batch_sizes: list[int], on_path, name: str = "model",
                   threads: int = 0) -> dict[str, bool]:
    """The branch every sample takes, for each ``If`` on the training path (nested ones included).

    Args:
        model: the inference model.
        feeds: ``feeds(batch_size)`` yields the feeds of the samples in batches of that size.
        batch_sizes: the batch sizes to check (one sample, and the training batch).
        on_path: ``on_path(model)`` names the ``If`` nodes the gradient would pass through.
        name: the model's name in messages.

    Raises:
        ModelError: naming a node whose condition the samples do not agree on.
    """
    taken: dict[str, bool] = {}
    current = onnx.ModelProto()
    current.CopyFrom(model)
    for _ in range(ROUNDS):
        pending = [n for n in on_path(current) if n not in taken]
        if not pending:
            break
        for node, values in _conditions(current, feeds, batch_sizes, threads, pending).items():
            if len(values) != 1:
                raise ModelError(f"{name}: node {node} (If) takes both branches on the calibration samples, and "
                                 "onnxruntime-training cannot differentiate through If; it is left untrained")
            taken[node] = values.pop()
        inline_branches(current, taken)
    return taken
