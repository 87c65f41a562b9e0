"""Import a Caffe net (``.prototxt`` + ``.caffemodel``) as an ONNX model and a compression config.

The structure comes from the prototxt, the weights from the caffemodel's layers of the
same name (as Caffe's ``CopyTrainedLayersFrom`` matches them). The TEST-phase net is
kept (``include`` / ``exclude`` rules evaluated for phase TEST, level 0, no stages);
loss and accuracy layers are dropped, Dropout and Split become aliases. Each converted
layer's main ONNX node carries the Caffe layer name, so a config can target it; helper
nodes are named ``<layer>/<role>``. In-place layers (top == bottom) write a new tensor
named ``<blob>/<layer>``; graph outputs are renamed back to their Caffe blob names.

Graph inputs come from ``Input`` / ``Data`` / ``MemoryData`` layers or the net-level
``input`` fields, with the batch dimension symbolic (``N``). A Data layer excluded from
the TEST net still defines its blob when a TEST-phase layer reads it and nothing else
does (a training net saved with a TRAIN-only data layer, as Caffe snapshots embed it).
Data layers do not know their image size: pass ``input_shape``.

Caffe-specific numerics kept exact:
- Pooling rounds output sizes up (``ceil((H + 2p - k) / s) + 1``, minus one when the
  last window would start in the padding). ONNX gets floor rounding with the extra
  rows as end padding. AVE divides by the window clipped to the padded image, so the
  padding counts but the extra end rows do not: pad == 0 -> ``count_include_pad=0``;
  pad > 0 and no extra rows -> ``count_include_pad=1``; both -> ``count_include_pad=1``
  times a constant map k_h * k_w / divisor (node ``<layer>/pool``, then the ``Mul``
  named after the layer).
- BatchNorm stores ``mean * f``, ``var * f`` and the moving-average factor f in a third
  blob: mean = blob0 / f, var = blob1 / f (0 when f == 0). A directly following Scale
  layer folds into the same ``BatchNormalization`` node (gamma, beta).
- InnerProduct flattens its input from ``axis``: ``y = flatten(x) @ W^T + b`` as a Gemm
  with ``transB = 1`` (``transB = 0`` when ``transpose: true``).

The config (docs/CONFIG.md format) lists every ``CmpConvolution`` / ``CmpInnerProduct``
layer with its ``sparse_ratio``, ``class_num`` and ``quantize_term``; plain
Convolution / InnerProduct layers get ``skip: true``, as Caffe never compresses them. The data layer's ``transform_param`` scale (and a single mean value) are
stored in the model's metadata under ``onnx_dc.preprocess``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_dc.data.datasets import METADATA_KEY, Preprocess
from onnx_dc.errors import ConversionError
from onnx_dc.graph.io import write_bytes_atomic
from onnx_dc.importers import caffe_schema as schema

OPSET = 17
IR_VERSION = 10
BATCH = "N"
CONFIG_VERSION = 1

Dim = int | str | None  # an int, the batch symbol "N", or None for another unknown size
Shape = tuple[Dim, ...]

COMPRESSIBLE_TYPES = ("CmpConvolution", "CmpInnerProduct")
INPUT_TYPES = ("Input", "Data", "MemoryData")

#: Layer types dropped for inference, with the reason.
DROPPED_TYPES = {
    "SoftmaxWithLoss": "a training loss",
    "EuclideanLoss": "a training loss",
    "SigmoidCrossEntropyLoss": "a training loss",
    "HingeLoss": "a training loss",
    "InfogainLoss": "a training loss",
    "MultinomialLogisticLoss": "a training loss",
    "ContrastiveLoss": "a training loss",
    "Accuracy": "a training metric",
    "Silence": "it only discards blobs",
}

_DATA_SOURCE = "a data source: replace it by an Input layer (input_param { shape { dim: ... } })"
_NOT_YET = "not converted by onnx_dc yet"

#: Layer types this importer does not convert, with the reason.
UNSUPPORTED_TYPES = {
    "Deconvolution": f"transposed convolution is {_NOT_YET}",
    "PReLU": f"learned-slope ReLU is {_NOT_YET}",
    "ELU": _NOT_YET,
    "AbsVal": _NOT_YET,
    "BNLL": _NOT_YET,
    "Power": _NOT_YET,
    "Exp": _NOT_YET,
    "Log": _NOT_YET,
    "Threshold": _NOT_YET,
    "Bias": _NOT_YET,
    "Slice": _NOT_YET,
    "Crop": _NOT_YET,
    "Tile": _NOT_YET,
    "ArgMax": _NOT_YET,
    "Reduction": _NOT_YET,
    "MVN": _NOT_YET,
    "Embed": _NOT_YET,
    "SPP": _NOT_YET,
    "Im2col": _NOT_YET,
    "Parameter": _NOT_YET,
    "RNN": "recurrent layers are not converted",
    "LSTM": "recurrent layers are not converted",
    "Python": "its computation is Python code that is not part of the net definition",
    "ImageData": _DATA_SOURCE,
    "HDF5Data": _DATA_SOURCE,
    "WindowData": _DATA_SOURCE,
    "DummyData": _DATA_SOURCE,
    "HDF5Output": "it writes files during training",
}

# V1 (``layers``) type enum names -> layer type strings.
_V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}


# ----------------------------------------------------------------------------- public API


def import_caffe(
    prototxt_path: str | os.PathLike,
    caffemodel_path: str | os.PathLike,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Convert a Caffe net and its trained weights to ONNX, plus its compression config.

    Args:
        prototxt_path: the net definition (protobuf text format), V1 ``layers`` or ``layer``.
        caffemodel_path: the trained weights (binary ``NetParameter``).
        input_shape: the per-sample input shape without the batch dimension, e.g.
            ``(1, 28, 28)``; a mapping from input blob name to shape for nets with several
            inputs. Needed for Data layers; overrides shapes the net states.

    Returns:
        The ONNX model (IR version 10, opset 17, weights as initializers, batch dimension
        ``N``) and the config dict (``version: 1`` and a ``nodes`` entry per Cmp* layer).

    Raises:
        ConversionError: a file cannot be read or parsed, a layer type is not supported,
            or the weights do not fit the net.
    """
    net = schema.read_prototxt(prototxt_path)
    weights = _weights_by_layer(schema.read_caffemodel(caffemodel_path))
    layers = [_Layer.from_proto(p, weights) for p in _net_layers(net)]
    kept = [layer for layer in layers if _in_test_net(layer)]
    fallback_inputs = {
        top: spec
        for layer in layers
        if layer.type in INPUT_TYPES and not _in_test_net(layer)
        for top, spec in _input_specs(layer).items()
    }
    builder = _Builder(_shape_overrides(input_shape), fallback_inputs)
    _declare_net_inputs(net, builder)
    for layer in _fold_batchnorm_scale(kept):
        _convert_layer(layer, builder)
    builder.check_overrides_used()
    return _make_model(net, builder), _make_config(kept)


def write_config_yaml(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a config dict as YAML, atomically (a temporary file, then ``os.replace``).

    Args:
        config: the config, e.g. the second value returned by :func:`import_caffe`.
        path: where to write it.
    """
    import yaml

    path = Path(path)
    text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    write_bytes_atomic(text.encode("utf-8"), path)


# ----------------------------------------------------------------------------- reading the net


@dataclass(frozen=True, eq=False)
class _Layer:
    """One Caffe layer, new-style or V1, with the blobs the caffemodel holds for it."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    proto: Any  # LayerParameter or V1LayerParameter, read only
    blobs: Sequence[Any] = ()  # BlobProto messages from the caffemodel
    fused_scale: _Layer | None = None

    @classmethod
    def from_proto(cls, proto: Any, weights: Mapping[str, Sequence[Any]]) -> _Layer:
        """Wrap a LayerParameter or V1LayerParameter."""
        if isinstance(proto.type, str):
            type_name = proto.type
        else:
            enum_name = schema.v1_type_name(proto.type) if proto.type else "NONE"
            type_name = _V1_TYPES.get(enum_name, f"V1 {enum_name}")
        return cls(
            proto.name, type_name, tuple(proto.bottom), tuple(proto.top), proto, weights.get(proto.name, ())
        )

    def param(self, field_name: str) -> Any:
        """The layer's ``*_param`` message, or its defaults when the layer format lacks it."""
        if field_name in self.proto.DESCRIPTOR.fields_by_name:
            return getattr(self.proto, field_name)
        message_type = schema.LayerParameter.DESCRIPTOR.fields_by_name[field_name].message_type
        return schema.message_class(message_type.name)()

    def has_param(self, field_name: str) -> bool:
        """Whether the prototxt sets this ``*_param`` message."""
        return field_name in self.proto.DESCRIPTOR.fields_by_name and self.proto.HasField(field_name)

    def fail(self, what: str) -> ConversionError:
        """A ConversionError naming this layer."""
        return ConversionError(f"layer {self.name!r} ({self.type}): {what}")


def _net_layers(net: Any) -> list[Any]:
    if net.layer and net.layers:
        raise ConversionError("the prototxt mixes 'layer' and legacy 'layers' entries; use one format")
    return list(net.layer) or list(net.layers)


def _weights_by_layer(model: Any) -> dict[str, Sequence[Any]]:
    # Caffe copies source layers in order, so a later layer of the same name wins.
    found: dict[str, Sequence[Any]] = {}
    for layer in list(model.layer) + list(model.layers):
        if len(layer.blobs):
            found[layer.name] = layer.blobs
    return found


def _in_test_net(layer: _Layer) -> bool:
    """Caffe's NetState filter for phase TEST, level 0 and no stages."""

    def meets(rule: Any) -> bool:
        if rule.HasField("phase") and rule.phase != schema.PHASE_TEST:
            return False
        if rule.HasField("min_level") and rule.min_level > 0:
            return False
        if rule.HasField("max_level") and rule.max_level < 0:
            return False
        return not rule.stage

    included = not layer.proto.include
    if any(meets(rule) for rule in layer.proto.exclude):
        included = False
    if any(meets(rule) for rule in layer.proto.include):
        included = True
    return included


def _fold_batchnorm_scale(layers: list[_Layer]) -> list[_Layer]:
    """Attach a Scale layer that directly follows a BatchNorm on its output to that BatchNorm."""
    out: list[_Layer] = []
    skip = False
    for i, layer in enumerate(layers):
        if skip:
            skip = False
            continue
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if layer.type == "BatchNorm" and nxt is not None and _scale_folds(layer, nxt, layers[i + 2 :]):
            layer = _Layer(layer.name, layer.type, layer.bottoms, nxt.tops, layer.proto, layer.blobs, nxt)
            skip = True
        out.append(layer)
    return out


def _scale_folds(bn: _Layer, scale: _Layer, rest: list[_Layer]) -> bool:
    p = scale.param("scale_param")
    if (
        scale.type != "Scale"
        or len(scale.bottoms) != 1
        or len(bn.tops) != 1
        or scale.bottoms[0] != bn.tops[0]
    ):
        return False
    if p.axis not in (1, -3) or p.num_axes != 1:
        return False
    in_place = scale.tops[0] == scale.bottoms[0]
    return in_place or not any(bn.tops[0] in later.bottoms for later in rest)


# ----------------------------------------------------------------------------- graph building


@dataclass(frozen=True)
class _InputSpec:
    """A blob that a data layer (or the net) provides: its per-sample shape and preprocessing."""

    layer: str
    shape: tuple[int, ...] | None
    preprocess: Preprocess | None = None


@dataclass
class _Builder:
    """Collects nodes, initializers and inputs while the layers are converted in order."""

    overrides: Mapping[str | None, tuple[int, ...]]
    fallback_inputs: Mapping[str, _InputSpec]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    pending: dict[str, _InputSpec] = field(default_factory=dict)
    inputs: dict[str, Shape] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # Caffe blob -> ONNX tensor
    shapes: dict[str, Shape] = field(default_factory=dict)  # ONNX tensor -> shape
    names: set[str] = field(default_factory=set)
    shared: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # ParamSpec name -> init
    dropped: dict[str, str] = field(default_factory=dict)  # blob -> the dropped layer that makes it
    preprocess: Preprocess | None = None
    used_overrides: set[str | None] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        """A tensor or initializer name not used yet, ``base`` if possible."""
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def provide(self, blob: str, spec: _InputSpec) -> None:
        """Register a blob that becomes a graph input when a layer reads it."""
        self.pending[blob] = spec
        self.current.pop(blob, None)

    def read(self, layer: _Layer, index: int) -> str:
        """The ONNX tensor holding bottom ``index`` of ``layer``."""
        blob = layer.bottoms[index]
        if blob in self.current:
            return self.current[blob]
        spec = self.pending.pop(blob, None) or self.fallback_inputs.get(blob)
        if spec is None:
            if blob in self.dropped:
                raise layer.fail(
                    f"reads blob {blob!r}, which comes from layer {self.dropped[blob]!r} "
                    "that is dropped for inference"
                )
            raise layer.fail(f"reads blob {blob!r}, which no layer before it produces in the TEST net")
        return self._add_input(layer, blob, spec)

    def _add_input(self, reader: _Layer, blob: str, spec: _InputSpec) -> str:
        key = None if None in self.overrides else blob
        shape = self.overrides.get(key, spec.shape)
        if key is None and self.inputs:
            raise ConversionError(
                f"input_shape was given as one shape but the net has several inputs "
                f"({', '.join([*self.inputs, blob])}); pass a mapping from blob name to shape"
            )
        if shape is None:
            raise ConversionError(
                f"the shape of input blob {blob!r} (from layer {spec.layer!r}, read by "
                f"{reader.name!r}) is not in the net; give it without the batch dimension: "
                "--input-shape 1,28,28 (input_shape=(1, 28, 28) in Python)"
            )
        self.used_overrides.add(key)
        full: Shape = (BATCH, *shape)
        self.names.add(blob)
        self.inputs[blob] = full
        self.current[blob] = blob
        self.shapes[blob] = full
        if self.preprocess is None and spec.preprocess is not None:
            self.preprocess = spec.preprocess
        return blob

    def check_overrides_used(self) -> None:
        """Report input_shape entries that name no input of the net."""
        unused = sorted(k for k in self.overrides if k is not None and k not in self.used_overrides)
        if unused:
            raise ConversionError(
                f"input_shape names {', '.join(map(repr, unused))}, which the net does not "
                f"read as input (its inputs: {', '.join(self.inputs) or 'none'})"
            )

    def shape(self, tensor: str) -> Shape:
        """The tracked shape of a tensor."""
        return self.shapes[tensor]

    def write(self, layer: _Layer, index: int, shape: Shape) -> str:
        """A new tensor for top ``index`` of ``layer``; in-place writes get ``<blob>/<layer>``."""
        blob = layer.tops[index]
        taken = blob in self.current or blob in self.names
        name = self.fresh(f"{blob}/{layer.name}" if taken else blob)
        self.current[blob] = name
        self.dropped.pop(blob, None)
        self.shapes[name] = tuple(shape)
        return name

    def alias(self, layer: _Layer, index: int, tensor: str) -> None:
        """Let top ``index`` of ``layer`` name an existing tensor (Dropout, Split)."""
        self.current[layer.tops[index]] = tensor

    def temp(self, layer: _Layer, role: str, shape: Shape) -> str:
        """An intermediate tensor of a multi-node conversion."""
        name = self.fresh(f"{layer.name}/{role}")
        self.shapes[name] = tuple(shape)
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: Any) -> None:
        """Append one ONNX node."""
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; returns its (unique) name."""
        unique = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), unique))
        return unique

    def weight(self, layer: _Layer, role: str, array: np.ndarray, blob_index: int) -> str:
        """Add a weight initializer ``<layer>.<role>``, reusing one that Caffe shares by ParamSpec name."""
        specs = layer.proto.param  # ParamSpec messages, or plain names in V1 layers
        spec = specs[blob_index] if blob_index < len(specs) else ""
        share = spec if isinstance(spec, str) else spec.name
        if share and share in self.shared:
            name, first = self.shared[share]
            if first.shape == array.shape:
                return name
        name = self.const(f"{layer.name}.{role}", array.astype(np.float32))
        if share:
            self.shared[share] = (name, array)
        return name


def _shape_overrides(input_shape: Any) -> dict[str | None, tuple[int, ...]]:
    if input_shape is None:
        return {}
    if isinstance(input_shape, Mapping):
        return {str(k): _positive_dims(v, f"input_shape[{k!r}]") for k, v in input_shape.items()}
    return {None: _positive_dims(input_shape, "input_shape")}


def _positive_dims(dims: Any, what: str) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise ConversionError(f"{what} must be a sequence of positive integers, got {dims!r}") from None
    if not out or any(d <= 0 for d in out):
        raise ConversionError(
            f"{what} must be a non-empty sequence of positive integers (no batch dimension), got {dims!r}"
        )
    return out


def _declare_net_inputs(net: Any, builder: _Builder) -> None:
    """Net-level ``input`` with ``input_shape`` or four ``input_dim`` values per input."""
    names = list(net.input)
    if net.input_shape and len(net.input_shape) != len(names):
        raise ConversionError(
            f"the net has {len(names)} input(s) but {len(net.input_shape)} input_shape entries"
        )
    if net.input_dim and len(net.input_dim) != 4 * len(names):
        raise ConversionError(
            f"the net has {len(names)} input(s) but {len(net.input_dim)} input_dim values "
            "(four per input expected)"
        )
    for i, name in enumerate(names):
        if net.input_shape:
            dims = tuple(net.input_shape[i].dim)
        elif net.input_dim:
            dims = tuple(net.input_dim[4 * i : 4 * i + 4])
        else:
            dims = None
        builder.provide(name, _InputSpec("<net input>", _sample_shape(dims)))


def _sample_shape(dims: Sequence[int] | None) -> tuple[int, ...] | None:
    """Drop the batch dimension of a Caffe shape; None when unknown or degenerate."""
    if dims is None or len(dims) < 2 or any(d <= 0 for d in dims[1:]):
        return None
    return tuple(int(d) for d in dims[1:])


def _input_specs(layer: _Layer) -> dict[str, _InputSpec]:
    """The blobs an Input / Data / MemoryData layer provides (the label top excluded)."""
    preprocess = _preprocess(layer)
    if layer.type == "Input":
        shapes = [tuple(s.dim) for s in layer.param("input_param").shape]
        if len(shapes) not in (0, 1, len(layer.tops)):
            raise layer.fail(
                f"has {len(layer.tops)} tops but {len(shapes)} shapes; give one shape or one per top"
            )
        per_top = shapes * len(layer.tops) if len(shapes) == 1 else shapes or [None] * len(layer.tops)
        return {
            top: _InputSpec(layer.name, _sample_shape(s), preprocess) for top, s in zip(layer.tops, per_top)
        }
    if not layer.tops:
        return {}
    shape = None
    if layer.type == "MemoryData":
        p = layer.param("memory_data_param")
        shape = _sample_shape((1, p.channels, p.height, p.width))
    return {layer.tops[0]: _InputSpec(layer.name, shape, preprocess)}


def _preprocess(layer: _Layer) -> Preprocess | None:
    """Caffe's ``x = (pixel - mean) * scale`` as ``Preprocess(scale, mean * scale)``."""
    if layer.has_param("transform_param"):
        t = layer.param("transform_param")
        scale, means, mean_file = t.scale, list(t.mean_value), t.mean_file
    elif layer.has_param("data_param"):  # scale and mean_file lived in data_param before transform_param
        d = layer.param("data_param")
        scale, means, mean_file = d.scale, [], d.mean_file
    else:
        return None
    scale = _f32(scale)
    if mean_file or len(set(means)) > 1:
        warnings.warn(
            f"layer {layer.name!r}: per-channel mean ({mean_file or means}) cannot be recorded in the "
            f"model's {METADATA_KEY} metadata (one mean for all channels); subtract it yourself",
            stacklevel=4,
        )
        means = []
    return Preprocess(scale=scale, mean=_f32(means[0] * scale) if means else 0.0)


def _f32(value: float) -> float:
    """A float32 field value as the shortest decimal that reads back to it (0.33, not 0.33000001)."""
    return float(str(np.float32(value)))


# ----------------------------------------------------------------------------- weights


def _blob_array(layer: _Layer, index: int, expected: tuple[int, ...]) -> np.ndarray:
    blob = layer.blobs[index]
    values = blob.data if len(blob.data) else blob.double_data
    if blob.HasField("shape"):
        stated = tuple(int(d) for d in blob.shape.dim)
        fits = stated == expected
    else:  # legacy 4-D num/channels/height/width, left-padded with ones
        stated = (blob.num, blob.channels, blob.height, blob.width)
        fits = len(expected) <= 4 and stated == (1,) * (4 - len(expected)) + expected
    if not fits and blob.HasField("shape") and len(stated) != len(expected):
        raise layer.fail(
            f"weight blob {index} has shape {stated} in the caffemodel but the input gives it "
            f"{len(expected)} dimensions, {expected}; check the input shape: it lists channels, height "
            "and width, e.g. --input-shape 1,28,28 (input_shape=(1, 28, 28) in Python)"
        )
    if not fits:
        raise layer.fail(
            f"weight blob {index} has shape {stated} in the caffemodel but the net expects "
            f"{expected}; use the prototxt this caffemodel was trained with (check num_output, "
            "kernel and input sizes)"
        )
    if len(values) != math.prod(expected):
        raise layer.fail(
            f"weight blob {index} holds {len(values)} values but its shape {stated} needs "
            f"{math.prod(expected)}; the caffemodel is damaged"
        )
    return np.asarray(values, dtype=np.float32).reshape(expected)


def _weights(layer: _Layer, *expected: tuple[int, ...]) -> list[np.ndarray]:
    """The layer's weight blobs, checked against the shapes the net implies."""
    if len(layer.blobs) != len(expected):
        have = "no layer of that name with weights" if not layer.blobs else f"{len(layer.blobs)} blob(s)"
        raise layer.fail(
            f"needs {len(expected)} weight blob(s) but the caffemodel has {have}; check that the "
            "caffemodel belongs to this prototxt and that the layer names match"
        )
    return [_blob_array(layer, i, tuple(int(d) for d in shape)) for i, shape in enumerate(expected)]


# ----------------------------------------------------------------------------- helpers for converters


def _arity(layer: _Layer, bottoms: int | None, tops: int) -> None:
    if bottoms is not None and len(layer.bottoms) != bottoms:
        raise layer.fail(f"expected {bottoms} bottom blob(s), got {len(layer.bottoms)}")
    if len(layer.tops) != tops:
        raise layer.fail(f"expected {tops} top blob(s), got {len(layer.tops)}")


def _axis(layer: _Layer, axis: int, rank: int, what: str = "axis") -> int:
    canonical = axis + rank if axis < 0 else axis
    if not 0 <= canonical < rank:
        raise layer.fail(f"{what} {axis} is out of range for an input of rank {rank}")
    return canonical


def _known(layer: _Layer, dims: Sequence[Dim], what: str) -> tuple[int, ...]:
    if any(not isinstance(d, int) for d in dims):
        raise layer.fail(f"needs known {what} but the input shape is {tuple(dims)}")
    return tuple(int(d) for d in dims)


def _product(dims: Sequence[Dim]) -> Dim:
    if len(dims) == 1:
        return dims[0]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _reshape(builder: _Builder, layer: _Layer, x: str, out_shape: Shape, out: str, name: str) -> None:
    """Reshape ``x`` to ``out_shape``: the batch dim copied where it stays in place, one unknown as -1."""
    in_shape = builder.shape(x)
    target = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            target.append(d)
        elif d == BATCH and i < len(in_shape) and in_shape[i] == BATCH:
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1:
        raise layer.fail(
            f"cannot express the reshape of {in_shape} to {out_shape} with a single unknown size"
        )
    shape_name = builder.const(f"{name}.shape", np.array(target, dtype=np.int64))
    builder.node("Reshape", [x, shape_name], [out], name)


def _spatial(
    layer: _Layer,
    message: Any,
    what: str,
    values: Sequence[int],
    n: int,
    default: int,
    both_needed: bool = True,
) -> tuple[int, ...]:
    """Caffe's per-dimension values: ``<what>_h`` / ``<what>_w`` (2-D only), else one or one per dimension."""
    h_name, w_name = f"{what}_h", f"{what}_w"
    has_h = h_name in message.DESCRIPTOR.fields_by_name and message.HasField(h_name)
    has_w = w_name in message.DESCRIPTOR.fields_by_name and message.HasField(w_name)
    if has_h or has_w:
        if n != 2 or (both_needed and not (has_h and has_w)):
            raise layer.fail(f"{h_name} and {w_name} need each other and a 2-D input")
        return (getattr(message, h_name), getattr(message, w_name))
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise layer.fail(f"{what} has {len(values)} values for {n} spatial dimensions")
    return tuple(int(v) for v in values)


# ----------------------------------------------------------------------------- converters


def _convert_input(layer: _Layer, builder: _Builder) -> None:
    for blob, spec in _input_specs(layer).items():
        builder.provide(blob, spec)


def _convert_convolution(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("convolution_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    if len(shape) < 3 or _axis(layer, p.axis, len(shape)) != 1:
        raise layer.fail(
            f"only channel axis 1 with spatial dimensions after it is supported (axis {p.axis}, "
            f"input shape {shape})"
        )
    n = len(shape) - 2
    kernel = _spatial(layer, p, "kernel", p.kernel_size, n, 0)
    pads = _spatial(layer, p, "pad", p.pad, n, 0, both_needed=False)
    strides = _spatial(layer, p, "stride", p.stride, n, 1)
    dilations = _spatial(layer, p, "dilation", p.dilation, n, 1)
    channels, *size = _known(layer, shape[1:], "channels and spatial sizes")
    group, out_channels = p.group, p.num_output
    if min(kernel) <= 0 or min(strides) <= 0 or out_channels <= 0 or group <= 0:
        raise layer.fail("needs num_output, kernel sizes and strides above 0")
    if channels % group or out_channels % group:
        raise layer.fail(f"group {group} does not divide {channels} input / {out_channels} output channels")
    expected = [(out_channels, channels // group, *kernel)] + ([(out_channels,)] if p.bias_term else [])
    arrays = _weights(layer, *expected)
    inputs = [x] + [
        builder.weight(layer, role, a, i) for i, (role, a) in enumerate(zip(("weight", "bias"), arrays))
    ]
    out_size = [
        (s + 2 * pd - (d * (k - 1) + 1)) // st + 1
        for s, pd, k, st, d in zip(size, pads, kernel, strides, dilations)
    ]
    if min(out_size) <= 0:
        raise layer.fail(f"the kernel {kernel} does not fit the input {shape}")
    y = builder.write(layer, 0, (shape[0], out_channels, *out_size))
    builder.node(
        "Conv",
        inputs,
        [y],
        layer.name,
        kernel_shape=list(kernel),
        pads=list(pads) * 2,
        strides=list(strides),
        dilations=list(dilations),
        group=group,
    )


def _convert_inner_product(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("inner_product_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    axis = _axis(layer, p.axis, len(shape))
    inner = math.prod(_known(layer, shape[axis:], f"sizes from axis {axis} on"))
    outputs = p.num_output
    if outputs <= 0:
        raise layer.fail("needs num_output above 0")
    expected = [(inner, outputs) if p.transpose else (outputs, inner)] + ([(outputs,)] if p.bias_term else [])
    arrays = _weights(layer, *expected)
    weights = [
        builder.weight(layer, role, a, i) for i, (role, a) in enumerate(zip(("weight", "bias"), arrays))
    ]
    lead = shape[:axis]
    flat = x
    if not (len(shape) == 2 and axis == 1):
        flat = builder.temp(layer, "flatten", (_product(lead) if lead else 1, inner))
        builder.node("Flatten", [x], [flat], f"{layer.name}/flatten", axis=axis)
    out_shape = (*lead, outputs)
    if len(lead) == 1:
        y = builder.write(layer, 0, out_shape)
        builder.node("Gemm", [flat, *weights], [y], layer.name, transB=0 if p.transpose else 1)
        return
    gemm = builder.temp(layer, "gemm", (_product(lead) if lead else 1, outputs))
    builder.node("Gemm", [flat, *weights], [gemm], layer.name, transB=0 if p.transpose else 1)
    _reshape(builder, layer, gemm, out_shape, builder.write(layer, 0, out_shape), f"{layer.name}/unflatten")


@dataclass(frozen=True)
class _PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    extra: tuple[int, int]  # end padding that turns Caffe's rounding into ONNX floor rounding
    out: tuple[int, int]


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe's pooled output size along one dimension (CEIL rounding by default).

    Args:
        size: input size; kernel, stride, pad: the pooling window.
        ceil: Caffe's default ``round_mode: CEIL``; False for ``FLOOR``.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:  # the last window would start in the padding
        out -= 1
    return out


def _pool_geometry(layer: _Layer, p: Any, size: tuple[int, int]) -> _PoolGeometry:
    kernel = _spatial(layer, p, "kernel", [p.kernel_size] if p.HasField("kernel_size") else [], 2, 0)
    pad = _spatial(layer, p, "pad", [p.pad], 2, 0, both_needed=False)
    stride = _spatial(layer, p, "stride", [p.stride], 2, 1)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise layer.fail("needs kernel_size (or kernel_h / kernel_w) and strides above 0")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise layer.fail(f"pad {pad} must be smaller than the kernel {kernel}")
    ceil = p.round_mode == 0
    out = tuple(caffe_pool_size(s, k, st, pd, ceil) for s, k, st, pd in zip(size, kernel, stride, pad))
    if min(out) <= 0:
        raise layer.fail(f"the kernel {kernel} does not fit the input size {size}")
    extra = tuple(
        max(0, (o - 1) * st + k - (s + 2 * pd)) for o, st, k, s, pd in zip(out, stride, kernel, size, pad)
    )
    return _PoolGeometry(kernel, stride, pad, extra, out)


def _convert_pooling(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("pooling_param")
    method = {0: "MAX", 1: "AVE"}.get(p.pool)
    if method is None:
        raise layer.fail("STOCHASTIC pooling is not supported (its test-time output is a weighted average)")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    if len(shape) != 4:
        raise layer.fail(f"Caffe pools 4-D blobs, got shape {shape}")
    size = _known(layer, shape[2:], "spatial sizes")
    if p.global_pooling:
        y = builder.write(layer, 0, (*shape[:2], 1, 1))
        builder.node("GlobalMaxPool" if method == "MAX" else "GlobalAveragePool", [x], [y], layer.name)
        return
    geo = _pool_geometry(layer, p, size)
    y = builder.write(layer, 0, (*shape[:2], *geo.out))
    attrs = {"kernel_shape": list(geo.kernel), "strides": list(geo.stride)}
    begin, end = list(geo.pad), [pd + e for pd, e in zip(geo.pad, geo.extra)]
    if method == "MAX":
        builder.node("MaxPool", [x], [y], layer.name, pads=begin + end, **attrs)
    elif not any(geo.pad):
        builder.node("AveragePool", [x], [y], layer.name, pads=begin + end, count_include_pad=0, **attrs)
    elif not any(geo.extra):
        builder.node("AveragePool", [x], [y], layer.name, pads=begin + end, count_include_pad=1, **attrs)
    else:
        # sum / k^2 from count_include_pad=1, rescaled by k^2 / (window clipped to the padded image).
        # Not Pad + count_include_pad=0: onnxruntime 1.19 fuses that Pad into the pool and then
        # leaves the padding out of the divisor.
        full = builder.temp(layer, "sum", (*shape[:2], *geo.out))
        builder.node(
            "AveragePool", [x], [full], f"{layer.name}/pool", pads=begin + end, count_include_pad=1, **attrs
        )
        factor = builder.const(f"{layer.name}.divisor", _ave_correction(geo, size))
        builder.node("Mul", [full, factor], [y], layer.name)


def _ave_correction(geo: _PoolGeometry, size: tuple[int, int]) -> np.ndarray:
    """k_h * k_w / (Caffe's AVE divisor) per output position, shape (out_h, out_w)."""
    areas = []
    for out, stride, pad, kernel, s in zip(geo.out, geo.stride, geo.pad, geo.kernel, size):
        start = np.arange(out) * stride - pad
        areas.append(np.minimum(start + kernel, s + pad) - start)
    return (geo.kernel[0] * geo.kernel[1] / np.outer(areas[0], areas[1])).astype(np.float32)


def _unary(op: str) -> Callable[[_Layer, _Builder], None]:
    def convert(layer: _Layer, builder: _Builder) -> None:
        _arity(layer, 1, 1)
        x = builder.read(layer, 0)
        builder.node(op, [x], [builder.write(layer, 0, builder.shape(x))], layer.name)

    return convert


def _convert_relu(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    slope = layer.param("relu_param").negative_slope
    x = builder.read(layer, 0)
    y = builder.write(layer, 0, builder.shape(x))
    if slope:
        builder.node("LeakyRelu", [x], [y], layer.name, alpha=_f32(slope))
    else:
        builder.node("Relu", [x], [y], layer.name)


def _convert_softmax(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    axis = _axis(layer, layer.param("softmax_param").axis, len(shape))
    builder.node("Softmax", [x], [builder.write(layer, 0, shape)], layer.name, axis=axis)


def _convert_lrn(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("lrn_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    if p.local_size % 2 == 0:
        raise layer.fail(f"local_size must be odd, got {p.local_size}")
    if p.norm_region == 0:  # ACROSS_CHANNELS: x / (k + alpha / n * sum(x^2))^beta, as ONNX LRN
        builder.node(
            "LRN",
            [x],
            [builder.write(layer, 0, shape)],
            layer.name,
            size=p.local_size,
            alpha=_f32(p.alpha),
            beta=_f32(p.beta),
            bias=_f32(p.k),
        )
        return
    _within_channel_lrn(layer, builder, x, shape, p)


def _within_channel_lrn(layer: _Layer, builder: _Builder, x: str, shape: Shape, p: Any) -> None:
    """Caffe's WITHIN_CHANNEL LRN: x / (1 + alpha * mean_{n x n window}(x^2))^beta (k is not used)."""
    if len(shape) != 4:
        raise layer.fail(f"WITHIN_CHANNEL LRN needs a 4-D input, got {shape}")
    n, half = p.local_size, (p.local_size - 1) // 2
    square = builder.temp(layer, "square", shape)
    builder.node("Mul", [x, x], [square], f"{layer.name}/square")
    mean = builder.temp(layer, "mean", shape)
    builder.node(
        "AveragePool",
        [square],
        [mean],
        f"{layer.name}/mean",
        kernel_shape=[n, n],
        pads=[half] * 4,
        count_include_pad=1,
    )
    alpha = builder.const(f"{layer.name}.alpha", np.array(p.alpha, dtype=np.float32))
    one = builder.const(f"{layer.name}.one", np.array(1.0, dtype=np.float32))
    beta = builder.const(f"{layer.name}.beta", np.array(p.beta, dtype=np.float32))
    scaled, base, denom = (builder.temp(layer, role, shape) for role in ("scaled", "base", "denom"))
    builder.node("Mul", [mean, alpha], [scaled], f"{layer.name}/alpha")
    builder.node("Add", [scaled, one], [base], f"{layer.name}/one")
    builder.node("Pow", [base, beta], [denom], f"{layer.name}/pow")
    builder.node("Div", [x, denom], [builder.write(layer, 0, shape)], layer.name)


def _convert_identity(layer: _Layer, builder: _Builder) -> None:
    """Dropout (identity at test time) and Split: every top names the bottom's tensor."""
    _arity(layer, 1, len(layer.tops))
    x = builder.read(layer, 0)
    for i in range(len(layer.tops)):
        builder.alias(layer, i, x)


def _convert_concat(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, None, 1)
    p = layer.param("concat_param")
    xs = [builder.read(layer, i) for i in range(len(layer.bottoms))]
    shapes = [builder.shape(x) for x in xs]
    axis = _axis(
        layer, p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, len(shapes[0])
    )
    if any(len(s) != len(shapes[0]) for s in shapes):
        raise layer.fail(f"bottoms have different ranks: {shapes}")
    along = [s[axis] for s in shapes]
    size = sum(along) if all(isinstance(d, int) for d in along) else None
    out_shape = (*shapes[0][:axis], size, *shapes[0][axis + 1 :])
    builder.node("Concat", xs, [builder.write(layer, 0, out_shape)], layer.name, axis=axis)


def _convert_eltwise(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, None, 1)
    p = layer.param("eltwise_param")
    xs = [builder.read(layer, i) for i in range(len(layer.bottoms))]
    shape = builder.shape(xs[0])
    if len(xs) < 2:
        raise layer.fail("needs at least two bottoms")
    coeffs = list(p.coeff)
    if coeffs and (p.operation != 1 or len(coeffs) != len(xs)):
        raise layer.fail("coeff is for SUM only, one per bottom")
    if p.operation == 1 and any(c != 1.0 for c in coeffs):
        scaled = []
        for i, (x, c) in enumerate(zip(xs, coeffs)):
            coeff = builder.const(f"{layer.name}.coeff{i}", np.array(c, dtype=np.float32))
            scaled.append(builder.temp(layer, f"scaled{i}", shape))
            builder.node("Mul", [x, coeff], [scaled[-1]], f"{layer.name}/coeff{i}")
        xs = scaled
    if p.operation in (1, 2):
        builder.node("Sum" if p.operation == 1 else "Max", xs, [builder.write(layer, 0, shape)], layer.name)
        return
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        last = i == len(xs) - 1
        out = builder.write(layer, 0, shape) if last else builder.temp(layer, f"prod{i}", shape)
        builder.node("Mul", [acc, x], [out], layer.name if last else f"{layer.name}/prod{i}")
        acc = out


def _convert_flatten(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("flatten_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    start = _axis(layer, p.axis, len(shape))
    end = _axis(layer, p.end_axis, len(shape), "end_axis")
    if end < start:
        raise layer.fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    out_shape = (*shape[:start], _product(shape[start : end + 1]), *shape[end + 1 :])
    y = builder.write(layer, 0, out_shape)
    if start == 1 and end == len(shape) - 1:
        builder.node("Flatten", [x], [y], layer.name, axis=1)
    else:
        _reshape(builder, layer, x, out_shape, y, layer.name)


def _convert_reshape(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("reshape_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    start = p.axis + len(shape) + 1 if p.axis < 0 else p.axis
    end = len(shape) if p.num_axes == -1 else start + p.num_axes
    if not 0 <= start <= end <= len(shape):
        raise layer.fail(f"axis {p.axis} / num_axes {p.num_axes} do not fit an input of rank {len(shape)}")
    spec = [int(d) for d in p.shape.dim]
    if spec.count(-1) > 1 or any(d < -1 for d in spec):
        raise layer.fail(f"shape {spec} may hold one -1 and no other negative size")
    middle = [shape[start + i] if d == 0 else d for i, d in enumerate(spec)]
    out_shape = [*shape[:start], *middle, *shape[end:]]
    if -1 in middle:
        out_shape[out_shape.index(-1)] = _inferred_dim(shape, [d for d in out_shape if d != -1])
    _reshape(builder, layer, x, tuple(out_shape), builder.write(layer, 0, tuple(out_shape)), layer.name)


def _inferred_dim(in_shape: Shape, others: list[Dim]) -> Dim:
    """The size a -1 stands for; the batch symbol cancels when both sides hold it once."""
    ins, outs = list(in_shape), list(others)
    if ins.count(BATCH) == 1 and outs.count(BATCH) == 1:
        ins.remove(BATCH)
        outs.remove(BATCH)
    if all(isinstance(d, int) for d in ins + outs) and math.prod(outs):
        return math.prod(ins) // math.prod(outs)
    return None


def _convert_batchnorm(layer: _Layer, builder: _Builder) -> None:
    _arity(layer, 1, 1)
    p = layer.param("batch_norm_param")
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise layer.fail(
            "uses batch statistics at test time (use_global_stats: false); set it to true or "
            "remove it to use the stored mean and variance"
        )
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    if len(shape) < 2:
        raise layer.fail(f"needs an input with a channel axis, got {shape}")
    (channels,) = _known(layer, shape[1:2], "channels")
    mean, var, factor = _weights(layer, (channels,), (channels,), (1,))
    inv = 0.0 if factor[0] == 0 else 1.0 / float(factor[0])
    gamma, beta = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    if layer.fused_scale is not None:
        gamma, beta = _scale_weights(layer.fused_scale, (channels,), beta)
    inputs = [
        x,
        builder.const(f"{layer.name}.scale", gamma),
        builder.const(f"{layer.name}.bias", beta),
        builder.weight(layer, "mean", mean * np.float32(inv), 0),
        builder.weight(layer, "var", var * np.float32(inv), 1),
    ]
    builder.node(
        "BatchNormalization", inputs, [builder.write(layer, 0, shape)], layer.name, epsilon=_f32(p.eps)
    )


def _scale_weights(layer: _Layer, shape: tuple[int, ...], no_bias: Any) -> tuple[np.ndarray, Any]:
    """gamma and beta (``no_bias`` without bias_term) of a Scale layer with a learned scale of ``shape``."""
    if layer.param("scale_param").bias_term:
        gamma, beta = _weights(layer, shape, shape)
        return gamma, beta
    (gamma,) = _weights(layer, shape)
    return gamma, no_bias


def _convert_scale(layer: _Layer, builder: _Builder) -> None:
    """y = x * gamma (+ beta), gamma over axes [axis, axis + num_axes) of x, or from bottom 1."""
    _arity(layer, None, 1)
    p = layer.param("scale_param")
    x = builder.read(layer, 0)
    shape = builder.shape(x)
    axis = _axis(layer, p.axis, len(shape)) if shape else 0
    if len(layer.bottoms) == 2:
        factor = builder.read(layer, 1)
        span = len(builder.shape(factor))
        beta = (
            _weights(layer, _known(layer, builder.shape(factor), "scale sizes"))[0] if p.bias_term else None
        )
    elif len(layer.bottoms) == 1:
        span = len(shape) - axis if p.num_axes == -1 else p.num_axes
        gshape = _known(layer, shape[axis : axis + span], "the scaled sizes")
        gamma, beta = _scale_weights(layer, gshape, None)
        factor = builder.weight(layer, "scale", gamma.reshape(gshape + (1,) * (len(shape) - axis - span)), 0)
    else:
        raise layer.fail(f"expected 1 or 2 bottom blobs, got {len(layer.bottoms)}")
    trailing = len(shape) - axis - span
    if len(layer.bottoms) == 2 and trailing > 0:
        axes = builder.const(f"{layer.name}/unsqueeze.axes", np.arange(span, span + trailing, dtype=np.int64))
        expanded = builder.temp(layer, "unsqueeze", (*builder.shape(factor), *(1,) * trailing))
        builder.node("Unsqueeze", [factor, axes], [expanded], f"{layer.name}/unsqueeze")
        factor = expanded
    y = builder.write(layer, 0, shape) if beta is None else builder.temp(layer, "scaled", shape)
    builder.node("Mul", [x, factor], [y], layer.name)
    if beta is not None:
        index = 0 if len(layer.bottoms) == 2 else 1
        bias = builder.weight(layer, "bias", beta.reshape(beta.shape + (1,) * trailing), index)
        builder.node("Add", [y, bias], [builder.write(layer, 0, shape)], f"{layer.name}/bias")


def _convert_dropped(layer: _Layer, builder: _Builder) -> None:
    for top in layer.tops:
        builder.current.pop(top, None)
        builder.dropped[top] = layer.name


CONVERTERS: dict[str, Callable[[_Layer, _Builder], None]] = {
    "Input": _convert_input,
    "Data": _convert_input,
    "MemoryData": _convert_input,
    "Convolution": _convert_convolution,
    "CmpConvolution": _convert_convolution,
    "InnerProduct": _convert_inner_product,
    "CmpInnerProduct": _convert_inner_product,
    "Pooling": _convert_pooling,
    "ReLU": _convert_relu,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "Softmax": _convert_softmax,
    "LRN": _convert_lrn,
    "Dropout": _convert_identity,
    "Split": _convert_identity,
    "Concat": _convert_concat,
    "Eltwise": _convert_eltwise,
    "Flatten": _convert_flatten,
    "Reshape": _convert_reshape,
    "BatchNorm": _convert_batchnorm,
    "Scale": _convert_scale,
    **{name: _convert_dropped for name in DROPPED_TYPES},
}


def _convert_layer(layer: _Layer, builder: _Builder) -> None:
    converter = CONVERTERS.get(layer.type)
    if converter is None:
        reason = UNSUPPORTED_TYPES.get(layer.type, "not a layer type this importer knows")
        raise layer.fail(f"unsupported layer type: {reason}")
    converter(layer, builder)


# ----------------------------------------------------------------------------- model and config


def _graph_outputs(builder: _Builder) -> list[tuple[str, str]]:
    """(blob, tensor) of every final blob value that no node reads, in blob order."""
    read = {name for node in builder.nodes for name in node.input}
    seen: set[str] = set()
    outputs = []
    for blob, tensor in builder.current.items():
        if tensor in read or tensor in builder.inputs or tensor in seen:
            continue
        seen.add(tensor)
        outputs.append((blob, tensor))
    if not outputs:
        raise ConversionError(
            "the TEST-phase net computes nothing: no layer output is left once the loss "
            "and accuracy layers are dropped"
        )
    return outputs


def _rename_outputs(builder: _Builder, outputs: list[tuple[str, str]]) -> list[str]:
    """Give each graph output its Caffe blob name, moving an earlier tensor of that name aside."""
    renames: dict[str, str] = {}
    for blob, tensor in outputs:
        if tensor == blob or blob in builder.inputs or blob in renames.values():
            continue
        if blob in builder.names:
            renames[blob] = builder.fresh(f"{blob}/0")
        renames[tensor] = blob
    if renames:
        for node in builder.nodes:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        builder.shapes.update({new: builder.shapes[old] for old, new in renames.items()})
    return [renames.get(tensor, tensor) for _, tensor in outputs]


def _value_info(name: str, shape: Shape) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, (int, str)) else None for d in shape]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _make_model(net: Any, builder: _Builder) -> onnx.ModelProto:
    if not builder.inputs:
        raise ConversionError(
            "the TEST-phase net reads no input; add an Input layer or net-level input fields"
        )
    outputs = _rename_outputs(builder, _graph_outputs(builder))
    graph = helper.make_graph(
        builder.nodes,
        net.name or "caffe_net",
        [_value_info(name, shape) for name, shape in builder.inputs.items()],
        [_value_info(name, builder.shapes[name]) for name in outputs],
        builder.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnx_dc.importers.caffe",
        doc_string=f"Converted from the Caffe net {net.name or '(unnamed)'}, TEST phase",
    )
    if builder.preprocess is not None:
        helper.set_model_props(model, {METADATA_KEY: builder.preprocess.to_metadata()})
    return model


def _fnmatch_literal(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name`` (config patterns are fnmatch patterns)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _make_config(layers: list[_Layer]) -> dict[str, Any]:
    """docs/CONFIG.md entries from the Cmp* fields of the TEST-phase layers."""
    nodes: list[dict[str, Any]] = []
    for layer in layers:
        if layer.type in ("Convolution", "InnerProduct"):
            # Caffe never compresses a plain layer; say so, or the config defaults would apply to it.
            nodes.append({"match": _fnmatch_literal(layer.name), "skip": True})
            continue
        if layer.type not in COMPRESSIBLE_TYPES:
            continue
        p = layer.param("convolution_param" if layer.type == "CmpConvolution" else "inner_product_param")
        nodes.append(
            {
                "match": _fnmatch_literal(layer.name),
                "sparse_ratio": _f32(p.sparse_ratio),
                "class_num": int(p.class_num),
                "quantize_term": bool(p.quantize_term),
            }
        )
    return {"version": CONFIG_VERSION, "nodes": nodes}
