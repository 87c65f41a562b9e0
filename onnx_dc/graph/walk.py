"""Subgraphs (If / Loop / Scan bodies) and topological order.

A graph is sorted when every node input is a graph input, an initializer, an outer-scope
value or the output of an earlier node. onnxruntime sorts unsorted graphs itself (a
keras2onnx export may store its nodes in reverse order); the ONNX checker refuses them.
:func:`sort_graph` puts the nodes in an order the checker accepts: Kahn's algorithm over
the dependencies of each node, its inputs plus the outer-scope names its subgraphs read,
taking ready nodes in their stored order so a sorted graph is left exactly as it was.
"""

from __future__ import annotations

import heapq
from typing import Iterator

import onnx


def node_subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop / Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from all_graphs(sub)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.node


def attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs and the names its subgraphs read from outside."""
    names = set(node.input)
    for sub in node_subgraphs(node):
        for inner in all_nodes(sub):
            names.update(inner.input)
    names.discard("")
    return names


def is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether every node comes after the nodes whose outputs it reads (subgraphs included)."""
    made = {out for node in graph.node for out in node.output}
    seen: set[str] = set()
    for node in graph.node:
        if any(name in made and name not in seen for name in reads(node)):
            return False
        seen.update(node.output)
    return all(is_sorted(sub) for node in graph.node for sub in node_subgraphs(node))


def sort_graph(graph: onnx.GraphProto) -> bool:
    """Sort ``graph`` and its subgraphs topologically, in place; True when anything moved.

    A cycle (which onnxruntime refuses too) leaves the graph as it was; the checker reports it.
    """
    moved = False
    for node in graph.node:
        for sub in node_subgraphs(node):
            moved |= sort_graph(sub)
    order = _kahn(list(graph.node))
    if order is None or order == list(range(len(graph.node))):
        return moved
    nodes = [graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def _kahn(nodes: list[onnx.NodeProto]) -> list[int] | None:
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in reads(node) if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return order if len(order) == len(nodes) else None


def weights_upstream(graph: onnx.GraphProto, weights: list[str], tensors: list[str]) -> dict[str, set[str]]:
    """For each name in ``tensors``, the names in ``weights`` its value depends on (``graph`` sorted).

    A node's outputs depend on everything its inputs depend on, and on what the nodes of its
    subgraphs read from outside; a weight depends on itself.
    """
    bit = {name: 1 << i for i, name in enumerate(weights)}
    reach: dict[str, int] = dict(bit)
    for node in graph.node:
        mask = 0
        for name in reads(node):
            mask |= reach.get(name, 0)
        if mask:
            for out in node.output:
                reach[out] = mask
    return {t: {w for w, b in bit.items() if reach.get(t, 0) & b} for t in tensors}


def needed_nodes(graph: onnx.GraphProto, names: list[str]) -> list[int]:
    """Indices, in stored order, of the nodes ``graph`` must run to compute ``names`` (subgraph reads included)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    todo = [producer[n] for n in names if n in producer]
    keep: set[int] = set()
    while todo:
        i = todo.pop()
        if i in keep:
            continue
        keep.add(i)
        todo.extend(producer[name] for name in reads(graph.node[i]) if name in producer)
    return sorted(keep)


def inline_if(graph: onnx.GraphProto, taken: dict[str, bool]) -> set[str]:
    """Replace the ``If`` nodes named in ``taken`` by the nodes of the branch taken (``True``: then_branch),
    in place, at the node's position; each branch output is copied to the node's output by an
    ``Identity``. Returns the names of the nodes of the branches not taken (nested ones included)
    that no node of a taken branch also has (unnamed nodes are not listed).

    Meant for a graph whose ``If`` conditions are known to be constant on some inputs (the
    collection models of :mod:`onnx_dc.runtime.collect`): the result computes the same outputs
    on those inputs. Branch tensors keep their names (ONNX forbids a subgraph to shadow an outer name).
    """
    dropped: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in [_copy_node(n) for n in graph.node]:
        if node.op_type != "If" or node.name not in taken:
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        branch = branches["then_branch" if taken[node.name] else "else_branch"]
        other = branches["else_branch" if taken[node.name] else "then_branch"]
        dropped.update({n.name for n in all_nodes(other)} - {n.name for n in all_nodes(branch)} - {""})
        nodes.extend(branch.node)
        graph.initializer.extend(branch.initializer)  # a branch's own constants (names unique, as below)
        for inner, outer in zip(branch.output, node.output):
            if outer:
                nodes.append(onnx.helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/{outer}"))
    del graph.node[:]
    graph.node.extend(nodes)
    return dropped


def _copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
