"""Writing small node sequences for the training graph's rewrites: unique names under one prefix, constants."""

from __future__ import annotations

from onnx import TensorProto
from onnx import helper as oh


class NodeBuilder:
    """Appends nodes named under one prefix (the rewrites of the training graph)."""

    def __init__(self, prefix: str):
        self.p, self.nodes, self._n = prefix, [], 0

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Append one node; returns its output (``out``, or a new name)."""
        self._n += 1
        name = out or f"{self.p}{op_type.lower()}{self._n}"
        self.nodes.append(oh.make_node(op_type, inputs, [name], name=f"{self.p}n{self._n}", **attrs))
        return name

    def ints(self, values: list[int], scalar: bool = False) -> str:
        self._n += 1
        name = f"{self.p}i{self._n}"
        dims = [] if scalar else [len(values)]
        self.nodes.append(oh.make_node("Constant", [], [name], value=oh.make_tensor(name, TensorProto.INT64, dims, values)))
        return name

    def real(self, value: float) -> str:
        self._n += 1
        name = f"{self.p}f{self._n}"
        self.nodes.append(oh.make_node("Constant", [], [name], value=oh.make_tensor(name, TensorProto.FLOAT, [], [value])))
        return name

    def part(self, x: str, start: int, stop: int, axis: int = -1) -> str:
        """``x[..., start:stop]`` along ``axis`` (Slice with constant inputs: opset 10 and later)."""
        return self.op("Slice", [x, self.ints([start]), self.ints([stop]), self.ints([axis])])

    def array(self, value) -> str:
        """A Constant holding a NumPy array."""
        from onnx import numpy_helper

        self._n += 1
        name = f"{self.p}a{self._n}"
        self.nodes.append(oh.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        return name

    def add(self, *terms: str | None) -> str:
        terms = [t for t in terms if t is not None]
        out = terms[0]
        for t in terms[1:]:
            out = self.op("Add", [out, t])
        return out
