"""How a compressed weight acts on its layer's input: the matrix view the data-aware passes use.

Every supported consumer computes, per output position, ``y = W2 x (+ b)`` with

* Gemm / MatMul (weight as the second input): ``W2`` is ``[out, in]``, ``x`` a row of the
  (transposed, for ``transA``) first input;
* Conv: ``W2 = W.reshape(out, in / group * prod(kernel))`` per group, ``x`` an im2col patch
  of the input (padding included) for that group;
* GRU / LSTM / RNN: ``W`` ``[D, gates * H, in]`` and ``R`` ``[D, gates * H, H]`` as
  ``[D * gates * H, in]`` with one group per direction ``d``. ``W``'s rows read the step's
  input ``x_t`` (every direction the same); ``R``'s rows of direction ``d`` read that
  direction's previous hidden state ``h_{t-1}`` (``Y`` one step back in the direction's
  order, ``initial_h`` at its first step). This is exact for every gate of LSTM and RNN and
  for GRU with ``linear_before_reset=1`` (PyTorch's GRU); a GRU with ``linear_before_reset=0``
  applies ``R_h`` to ``r_t * h_{t-1}``, which the graph does not expose, so its ``R`` has no
  view. Nodes with ``sequence_lens`` (padded steps would count) or ``layout=1`` have none either.
  A node that leaves ``Y`` unnamed gets it named in the models statistics are collected from;
* ConvTranspose (explicit pads, no ``output_shape``): the Conv it equals,
  ``Conv(Pad(Z_s(x), b, e), W')`` with stride 1 (train/equivalents.py states it): ``x`` an
  im2col patch of the input with ``s - 1`` zeros put after every element along each axis
  and padded by ``b = d (k - 1) - p_begin``, ``e = d (k - 1) - p_end + o - (s - 1)``;
  ``W2`` row ``g * C_out/g + o'`` holds ``W[g * C_in/g + i, o', k - 1 - kernel index]``.

The view stores, for each element of ``W2``, its index in the initializer's flat array
(the initializer reaches the node through Reshape / Transpose / Identity / Squeeze /
Unsqueeze / Slice, and Concat of such parts, which only move elements), so statistics over ``W2``'s columns map back to
the stored weight. Consumers not listed (ConvTranspose with pads past its kernel, LSTM
peepholes, a weight as the first input of Gemm / MatMul, Conv over more than 3 spatial
dims, nodes inside subgraphs; the collector replaces an If the samples always take one way by
that branch first) have no view: data-aware passes leave such weights to the
data-free path and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dc.graph import ops
from onnx_dc.graph.walk import attributes
from onnx_dc.graph.weights import WeightSite


@dataclass(frozen=True)
class ConvGeometry:
    """Conv attributes in explicit form (pads as ``[begin..., end...]``)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str
    upsample: tuple[int, ...] = ()  # ConvTranspose: zeros inserted, ``s - 1`` after every input element per axis


@dataclass(frozen=True)
class Recurrent:
    """Where a recurrent weight's input rows come from.

    Attributes:
        reads: ``x`` (the ``W`` input: rows of ``X`` ``[seq, batch, in]``) or ``h`` (``R``: the previous
            hidden state, from ``Y`` ``[seq, D, batch, H]``).
        reverse: per direction, whether it runs from the last step to the first.
        initial: tensor name of ``initial_h`` when computed or fed, else None.
        initial_value: ``initial_h`` when it is an initializer, else None (zeros when both are None).
        expose: the node leaves ``Y`` unnamed (only ``Y_h`` / ``Y_c`` are used): the collection
            models name it ``activation`` (see :func:`hidden_output_name`).
    """

    reads: str
    reverse: tuple[bool, ...]
    initial: str | None = None
    initial_value: np.ndarray | None = None
    expose: bool = False


@dataclass(frozen=True)
class LayerView:
    """One consumer of a weight as ``y = W2 x``.

    Attributes:
        node: consumer node name.
        op_type: Conv, ConvTranspose, Gemm, MatMul, GRU, LSTM, RNN or Gather.
        activation: name of the tensor ``x`` is taken from (Gather: its indices, ``x`` their one-hot rows).
        index: int64 ``[out, in_per_group]``: flat initializer index of each ``W2`` element.
        groups: Conv groups (1 otherwise); rows ``o`` use group ``o // (out // groups)``.
        trans_a: Gemm's transA (x is a column of the input).
        conv: Conv geometry (ConvTranspose: that of its equivalent Conv), None for Gemm / MatMul / recurrent.
        bias: initializer name of the bias added to ``y`` (Conv / Gemm input, or a following Add), or None.
        bias_scale: ``alpha / beta`` of Gemm (the bias absorbs ``alpha * dW x`` as ``beta * db``).
        bias_rows: flat index in ``bias`` of each row's entry; None when ``bias`` is the rows' bias in order
            (a recurrent ``B`` holds ``[Wb, Rb]`` per direction: ``W``'s rows use the first half, ``R``'s the second).
        recurrent: for a GRU / LSTM / RNN weight, where its rows' inputs come from (``activation``
            is ``X`` or ``Y``); None otherwise.
        lookup: an embedding table read by indices (``activation``), ``x`` being their one-hot rows.
    """

    node: str
    op_type: str
    activation: str
    index: np.ndarray
    groups: int = 1
    trans_a: bool = False
    conv: ConvGeometry | None = None
    bias: str | None = None
    bias_scale: float = 1.0
    recurrent: Recurrent | None = None
    bias_rows: np.ndarray | None = None
    lookup: bool = False

    def bias_index(self) -> np.ndarray:
        """Flat index in ``bias`` of each row's entry."""
        return np.arange(self.rows) if self.bias_rows is None else self.bias_rows

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every tensor the input rows are built from (``activation``, and a computed ``initial_h``)."""
        extra = self.recurrent.initial if self.recurrent is not None and self.recurrent.initial else None
        return (self.activation,) if extra is None else (self.activation, extra)

    @property
    def rows(self) -> int:
        """Output rows (channels) of ``W2``."""
        return int(self.index.shape[0])

    @property
    def cols(self) -> int:
        """Input columns of ``W2`` per group."""
        return int(self.index.shape[1])

    def group_of_rows(self) -> np.ndarray:
        """Group index of every row."""
        return np.arange(self.rows) // (self.rows // self.groups)


def layer_views(model: onnx.ModelProto, site: WeightSite) -> tuple[list[LayerView], str]:
    """Views of every consumer of ``site``; empty with the reason when one is not supported."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    consumers_of = {}
    for n in graph.node:
        for i in n.input:
            consumers_of.setdefault(i, []).append(n)
    inits = {t.name: t for t in graph.initializer}
    views = []
    for c in site.consumers:
        node = nodes.get(c.node)
        if node is None:
            return [], f"read by {c.node!r} inside a subgraph"
        view = _view(node, c.input_index, site, producer, inits, consumers_of)
        if isinstance(view, str):
            return [], view
        views.append(view)
    kinds = {v.op_type for v in views}
    if len({v.lookup for v in views}) > 1:  # tied embeddings
        return [], (f"read both as a lookup table and as a matrix ({', '.join(sorted(kinds))}): a tied weight's "
                    "data-aware passes would weigh two different errors")
    return views, ""


def _view(node, input_index, site, producer, inits, consumers_of) -> LayerView | str:
    idx = _traced_index(node.input[input_index], site, producer, inits)
    if isinstance(idx, str):
        return idx
    spec = ops.of(node)
    build = _VIEWS.get(spec.view) if spec is not None else None
    view = build(node, input_index, idx, attributes(node), inits, consumers_of) if build is not None else None
    if view is None:
        return f"{node.op_type} reading the weight as input {input_index} (rank {idx.ndim}) has no matrix view"
    return view


def _conv_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits, consumers_of) -> LayerView | str | None:
    """The weight of a Conv-like op (input 1, ``[out, in / group, *kernel]``) over im2col patches of input 0."""
    if input_index != 1:
        return None
    spatial = idx.ndim - 2
    if not 1 <= spatial <= 3:
        return f"{node.op_type} with {spatial} spatial dims"
    geo = ConvGeometry(tuple(idx.shape[2:]), tuple(attrs.get("strides", [1] * spatial)),
                       tuple(attrs.get("dilations", [1] * spatial)), tuple(attrs.get("pads", [0] * 2 * spatial)),
                       attrs.get("auto_pad", b"NOTSET").decode() if isinstance(attrs.get("auto_pad"), bytes)
                       else str(attrs.get("auto_pad", "NOTSET")))
    if geo.auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"{node.op_type} auto_pad {geo.auto_pad}"
    slot = ops.of(node).bias
    bias = (node.input[slot] if slot is not None and len(node.input) > slot and node.input[slot] in inits
            else _following_add(node, inits, consumers_of, idx.shape[0], spatial))
    return LayerView(node.name, node.op_type, node.input[0], idx.reshape(idx.shape[0], -1), int(attrs.get("group", 1)),
                     conv=geo, bias=bias)


def _gemm_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits, consumers_of) -> LayerView | None:
    """Gemm's B (``transB``: ``[out, in]``, else ``[in, out]``), rows of A (columns with ``transA``)."""
    if input_index != 1 or idx.ndim != 2:
        return None
    w2 = idx if attrs.get("transB", 0) else idx.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    slot = ops.of(node).bias
    bias = node.input[slot] if slot is not None and len(node.input) > slot and node.input[slot] in inits else None
    if bias is not None and _numel(inits[bias]) != w2.shape[0]:
        bias = None
    return LayerView(node.name, node.op_type, node.input[0], np.ascontiguousarray(w2),
                     trans_a=bool(attrs.get("transA", 0)), bias=bias, bias_scale=alpha / beta if beta else 0.0)


def _matmul_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits, consumers_of) -> LayerView | None:
    """A ``[in, out]`` weight as the second input of a matrix product over the last axis of input 0."""
    if input_index != 1 or idx.ndim != 2:
        return None
    slot = ops.of(node).bias
    bias = node.input[slot] if slot is not None and len(node.input) > slot and node.input[slot] in inits else None
    if bias is None or _numel(inits[bias]) != idx.shape[1]:
        bias = _following_add(node, inits, consumers_of, idx.shape[1])
    return LayerView(node.name, node.op_type, node.input[0], np.ascontiguousarray(idx.T), bias=bias)


def _lookup_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits, consumers_of) -> LayerView | None:
    """An embedding table ``[rows, width]`` read by Gather (axis 0): ``y = W^T onehot(i)``, a matrix product
    whose input ``x`` is the one-hot row of each index, so ``E[x_r^2]`` is how often index ``r`` occurs."""
    if input_index != 0 or idx.ndim != 2 or attrs.get("axis", 0) != 0 or len(node.input) < 2:
        return None
    return LayerView(node.name, node.op_type, node.input[1], np.ascontiguousarray(idx.T), lookup=True)


def _conv_transpose_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits,
                         consumers_of) -> LayerView | str | None:
    """A ConvTranspose weight as the Conv it equals on the zero-inserted, padded input."""
    if input_index != 1:
        return None
    n = idx.ndim - 2
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if not 1 <= n <= 3 or auto_pad != "NOTSET" or "output_shape" in attrs:
        return "ConvTranspose with auto_pad, output_shape or over 3 spatial dims"
    kernel = tuple(idx.shape[2:])
    strides = tuple(attrs.get("strides", [1] * n))
    dilations = tuple(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * (2 * n)))
    extra = list(attrs.get("output_padding", [0] * n))
    g = int(attrs.get("group", 1))
    begin = [d * (k - 1) - pads[a] for a, (d, k) in enumerate(zip(dilations, kernel))]
    end = [d * (k - 1) - pads[n + a] + extra[a] - (s - 1)
           for a, (d, k, s) in enumerate(zip(dilations, kernel, strides))]
    if min(begin + end) < 0 or idx.shape[0] % g:
        return "ConvTranspose with pads past its kernel"
    c_in, c_out_g = idx.shape[0], idx.shape[1]
    w = idx.reshape((g, c_in // g, c_out_g) + kernel).swapaxes(1, 2).reshape((g * c_out_g, c_in // g) + kernel)
    w = w[(slice(None), slice(None)) + (slice(None, None, -1),) * n]
    geo = ConvGeometry(kernel, (1,) * n, dilations, tuple(begin + end), "NOTSET", strides)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
    if bias is not None and _numel(inits[bias]) != w.shape[0]:
        bias = None
    return LayerView(node.name, node.op_type, node.input[0], np.ascontiguousarray(w.reshape(w.shape[0], -1)), g,
                     conv=geo, bias=bias)


def _recurrent_view(node, input_index: int, idx: np.ndarray, attrs: dict, inits,
                    consumers_of) -> LayerView | str | None:
    """``W`` (input 1) or ``R`` (input 2) of a GRU / LSTM / RNN node, one group per direction."""
    if input_index not in (1, 2) or idx.ndim != 3:
        return None
    if len(node.input) > 4 and node.input[4]:
        return f"{node.op_type} with sequence_lens"
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    dirs = idx.shape[0]
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None or len(reverse) != dirs:
        return f"{node.op_type} direction {direction} with {dirs} weight direction(s)"
    if int(attrs.get("layout", 0)):
        return f"{node.op_type} with layout=1 (batch first, which onnxruntime does not run)"
    rows = idx.reshape(-1, idx.shape[2])
    per_dir = idx.shape[1]  # gates * hidden
    bias = node.input[3] if len(node.input) > 3 and node.input[3] in inits else None
    if bias is not None and _numel(inits[bias]) != 2 * dirs * per_dir:
        bias = None
    # B is [D, 2 * gates * H]: W's bias first, then R's
    half = 0 if input_index == 1 else per_dir
    bias_rows = (np.arange(dirs)[:, None] * 2 * per_dir + half + np.arange(per_dir)).ravel()
    if input_index == 1:
        return LayerView(node.name, node.op_type, node.input[0], rows, dirs, bias=bias,
                         recurrent=Recurrent("x", reverse), bias_rows=bias_rows)
    if _resets_before_r(node) and not attrs.get("linear_before_reset", 0):
        return f"{node.op_type} with linear_before_reset=0 (R_h reads r * h, which the graph does not expose)"
    expose = not node.output or not node.output[0]
    if expose and (not node.name or not any(node.output)):
        return f"{node.op_type} without a name or any output (R's inputs are Y one step back)"
    initial = node.input[5] if len(node.input) > 5 and node.input[5] else None
    value = None
    if initial is not None and initial in inits:
        value, initial = numpy_helper.to_array(inits[initial]).astype(np.float32), None
    y = hidden_output_name(node.name) if expose else node.output[0]
    return LayerView(node.name, node.op_type, y, rows, dirs, bias=bias,
                     recurrent=Recurrent("h", reverse, initial, value, expose), bias_rows=bias_rows)


def _resets_before_r(node: onnx.NodeProto) -> bool:
    """Whether the op has a reset gate that may apply before ``R`` (the ``linear_before_reset`` attribute)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, domain="" if node.domain in ops.STANDARD_DOMAINS else node.domain)
    except onnx.defs.SchemaError:
        return False
    return "linear_before_reset" in schema.attributes


def hidden_output_name(node: str) -> str:
    """The name the collection models give a recurrent node's unnamed ``Y`` output."""
    return f"{node}/onnx_dc_Y"


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def _following_add(node, inits, consumers_of, out: int, spatial: int = 0) -> str | None:
    """The initializer added right after ``node`` when it is a per-output-channel bias."""
    users = consumers_of.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [i for i in users[0].input if i != node.output[0]]
    if len(other) != 1 or other[0] not in inits:
        return None
    dims = [d for d in inits[other[0]].dims]
    if _numel(inits[other[0]]) != out or inits[other[0]].data_type != onnx.TensorProto.FLOAT:
        return None
    # a Conv output is [N, C, *spatial]: the bias must broadcast along the channel axis only
    if spatial:
        if len(dims) < spatial + 1 or dims[len(dims) - spatial - 1] != out:
            return None
    if not spatial and dims and dims[-1] != out:
        return None
    return other[0]


def _traced_index(name, site, producer, inits) -> np.ndarray | str:
    """Flat initializer indices as the consumer sees the weight: pass-through ops (Identity, Transpose,
    Reshape, Squeeze, Unsqueeze, Slice, Split) and Concat of parts of the weight (an exporter's gate reorder)
    from the initializer to the consumer; shapes, axes and bounds from initializers or Constant nodes."""
    if name == site.name:
        return np.arange(site.numel, dtype=np.int64).reshape(site.shape)
    node = producer.get(name)
    if node is None:
        return f"weight path through {name!r} not understood"
    if node.op_type == "Concat":
        parts = [_traced_index(i, site, producer, inits) for i in node.input]
        bad = next((p for p in parts if isinstance(p, str)), None)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return bad if bad is not None else np.concatenate(parts, axis=axis)
    if node.op_type == "Constant" or not node.input:
        return f"weight path through {name!r} not understood"
    arr = _traced_index(node.input[0], site, producer, inits)
    if isinstance(arr, str):
        return arr
    if node.op_type == "Split":
        return _split(node, list(node.output).index(name), arr, _Values(producer, inits))
    return _apply(node, arr, _Values(producer, inits))


class _Values:
    """Constant int values of the weight path's shape / axes / bounds inputs: initializers or Constant nodes."""

    def __init__(self, producer, inits) -> None:
        self.producer, self.inits = producer, inits

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> onnx.TensorProto:
        return self.get(name)

    def get(self, name: str) -> onnx.TensorProto | None:
        if name in self.inits:
            return self.inits[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return next((a.t for a in node.attribute if a.name == "value"), None)
        return None


def _apply(node, arr: np.ndarray, inits) -> np.ndarray | str:
    attrs = attributes(node)
    if node.op_type == "Identity":
        return arr
    if node.op_type == "Transpose":
        return np.transpose(arr, attrs.get("perm"))
    if node.op_type == "Reshape":
        if len(node.input) < 2 or node.input[1] not in inits:
            return "Reshape with a computed shape on the weight path"
        shape = [int(d) for d in numpy_helper.to_array(inits[node.input[1]])]
        shape = [arr.shape[i] if d == 0 and not attrs.get("allowzero", 0) else d for i, d in enumerate(shape)]
        return arr.reshape(shape)
    if node.op_type == "Slice":
        return _slice(node, arr, inits)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] in inits:
        axes = [int(a) for a in numpy_helper.to_array(inits[node.input[1]])]
    if node.op_type == "Squeeze":
        return np.squeeze(arr, tuple(axes) if axes is not None else None)
    if node.op_type == "Unsqueeze" and axes is not None:
        out = arr
        for a in sorted(int(x) % (arr.ndim + len(axes)) for x in axes):
            out = np.expand_dims(out, a)
        return out
    return f"{node.op_type} on the weight path"


def _split(node, k: int, arr: np.ndarray, inits) -> np.ndarray | str:
    """Output ``k`` of ``Split`` (sizes from its input, opset 13+, or its attribute; else equal parts, as
    ``num_outputs`` of opset 18 or the output count says)."""
    attrs = attributes(node)
    axis = int(attrs.get("axis", 0)) % arr.ndim
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in inits:
            return "Split with computed sizes on the weight path"
        sizes = [int(v) for v in numpy_helper.to_array(inits[node.input[1]]).ravel()]
    elif "split" in attrs:
        sizes = [int(v) for v in attrs["split"]]
    else:
        count = int(attrs.get("num_outputs", len(node.output)))
        step = -(-arr.shape[axis] // count)  # the last part is smaller when the length does not divide
        sizes = [min(step, arr.shape[axis] - step * i) for i in range(count)]
    if sum(sizes) != arr.shape[axis] or k >= len(sizes):
        return "Split whose sizes do not add up on the weight path"
    start = sum(sizes[:k])
    return np.take(arr, np.arange(start, start + sizes[k]), axis=axis)


def _slice(node, arr: np.ndarray, inits) -> np.ndarray | str:
    """``Slice`` (opset 10+: starts, ends, axes, steps as inputs) with constant bounds and positive steps."""
    given = list(node.input[1:])
    if not given:  # opset 1-9: bounds as attributes
        attrs = {a.name: list(a.ints) for a in node.attribute}
        vals = [attrs.get("starts"), attrs.get("ends"), attrs.get("axes")]
    elif len(given) < 2 or any(n and n not in inits for n in given):
        return "Slice with computed bounds on the weight path"
    else:
        vals = [None if not n else [int(v) for v in numpy_helper.to_array(inits[n]).ravel()] for n in given]
    starts, ends = vals[0], vals[1]
    axes = vals[2] if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
    steps = vals[3] if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
    if any(st <= 0 for st in steps):
        return "Slice with a negative step on the weight path"
    index = [slice(None)] * arr.ndim
    for a, b, e, st in zip(axes, starts, ends, steps):
        index[a % arr.ndim] = slice(b, e, st)
    return arr[tuple(index)]


# op table view kind -> builder; a builder returns the view, a reason it has none, or None when
# the weight is not the input the kind reads
_VIEWS = {"conv": _conv_view, "conv_transpose": _conv_transpose_view, "gemm": _gemm_view, "matmul": _matmul_view,
          "recurrent": _recurrent_view, "lookup": _lookup_view}
