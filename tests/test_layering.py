"""Imports point one way: no circles, no import against the declared layer order, and op types named in the op table.

Every import of the package is read from the source (also imports inside functions), so a
lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnx_dc"

# The rooms of onnx_dc, bottom to top. A module may import its own room and the rooms below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("onnx_dc.errors", "onnx_dc.progress", "onnx_dc.sections", "onnx_dc.sweep_grid"),  # plain Python
    ("onnx_dc.numerics", "onnx_dc.data"),  # numpy only: codecs, k-means, bit packing; datasets and samples
    ("onnx_dc.graph.ops", "onnx_dc.config"),  # what an op is, what a setting is
    ("onnx_dc.graph",),  # ONNX graphs: reading and writing, decoders, weights and their matrix views
    ("onnx_dc.formats", "onnx_dc.importers", "onnx_dc.plan", "onnx_dc.report"),  # .dcz; Caffe; the plan; report
    ("onnx_dc.passes",),  # the compression passes
    ("onnx_dc.runtime",),  # onnxruntime: sessions, evaluation, statistics, fidelity
    ("onnx_dc.train",),  # onnxruntime-training
    ("onnx_dc.calibrate", "onnx_dc.pipeline", "onnx_dc.api", "onnx_dc.demo"),  # the stages and the public API
    ("onnx_dc.analysis",),  # sensitivity sweeps, settings for a target, plots
    ("onnx_dc.cli", "onnx_dc.__main__"),  # the command line
)
# The package facade (onnx_dc/__init__.py) re-exports the API; modules inside the package do not import it.
FACADE = "onnx_dc"
FACADE_USERS: set[str] = set()  # modules that import the facade, filled by import_graph
# The longest import chain (modules) may not grow; the goal is 10.
MAX_CHAIN = 16

# Op types named as strings outside the op table (onnx_dc/graph/ops.py), each with why.
OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Gather")
BUILDERS = {  # modules that build nodes of these ops in the graphs they write
    "onnx_dc.graph.decoders": {"Gather", "MatMul"},  # the decoder functions: codebook lookup, bit unpacking
    "onnx_dc.train.equivalents": {"Conv", "Gather"},  # ConvTranspose as a Conv; time and kernel reversal
    "onnx_dc.train.distill": {"Gather"},
    "onnx_dc.train.resize": {"MatMul"},  # Resize as matrix products
    "onnx_dc.train.elementwise": {"MatMul"},  # CumSum as a product with a triangular matrix
    # LSTM / GRU / RNN written out by their definitions (gates per op, which GRUs train as they are)
    "onnx_dc.train.recurrent": {"MatMul", "Gather", "LSTM", "GRU", "RNN"},  # the KL loss reads the class count from the logits' shape
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source).

    An import of the package facade itself (``import onnx_dc``) from inside the package is
    recorded under :data:`FACADE_USERS`, not as an edge (as ../shared/tools/imports.py counts).
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` depends on pkg.mod; ``from pkg import name`` on pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target == FACADE and mod != FACADE:
                    FACADE_USERS.add(mod)
                elif target and target != mod and not mod.startswith(target + "."):  # a package's own __init__
                    edges[mod].add(target)
    return edges


def layer_of(mod: str) -> int:
    """The layer of the most specific room naming ``mod`` (``onnx_dc.graph.ops`` before ``onnx_dc.graph``)."""
    found = [(len(r), i) for i, rooms in enumerate(LAYERS) for r in rooms if mod == r or mod.startswith(r + ".")]
    if not found:
        raise AssertionError(f"{mod}: not in any layer of LAYERS; add it to its room")
    return max(found)[1]


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    memo: dict[str, list[str]] = {}

    def chain(mod: str) -> list[str]:
        if mod not in memo:
            memo[mod] = [mod]  # a circle ends here (test_no_circles names it)
            memo[mod] = [mod] + max((chain(t) for t in edges[mod]), key=len, default=[])
        return memo[mod]

    return max((chain(m) for m in edges), key=len)


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return import_graph()


def test_no_circles(edges):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for target in sorted(edges[mod]):
            if state.get(target) == 1:
                circle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        stack.pop()
        state[mod] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod)


def test_imports_follow_the_layer_order(edges):
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(edges.items()) if m != FACADE
              for t in sorted(targets) if t != FACADE and layer_of(t) > layer_of(m)]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_only_the_command_line_imports_the_facade(edges):
    """The CLI runs the public API (``onnx_dc.compress``, ...); a module below it importing the facade would be a
    hidden import against the layer order."""
    assert FACADE_USERS, "the walk found no import of the facade (the CLI uses it)"
    assert not [m for m in FACADE_USERS if layer_of(m) < len(LAYERS) - 1], sorted(FACADE_USERS)


def test_the_longest_import_chain_does_not_grow(edges):
    chain = longest_chain(edges)
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_op_types_are_named_in_the_op_table_and_by_graph_builders_only():
    named: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        mod = module_name(path)
        if mod.startswith("onnx_dc.importers"):  # Caffe layer types map onto ONNX ops by name
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in OP_TYPES:
                named.setdefault(node.value, set()).add(mod)
    stray = {op: sorted(m for m in mods if m != "onnx_dc.graph.ops" and op not in BUILDERS.get(m, ()))
             for op, mods in named.items()}
    assert not any(stray.values()), f"op types named outside the op table: {stray}"


def test_the_layer_test_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    """The walk reads imports in function bodies too: a lazy upward import is caught."""
    fake = tmp_path / "onnx_dc"
    (fake / "numerics").mkdir(parents=True)
    (fake / "cli").mkdir()
    for init in (fake / "__init__.py", fake / "numerics" / "__init__.py", fake / "cli" / "__init__.py"):
        init.write_text("")
    (fake / "numerics" / "k.py").write_text("def f():\n    from onnx_dc.cli import main\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="onnx_dc.numerics.k .* imports onnx_dc.cli"):
        test_imports_follow_the_layer_order(import_graph())
