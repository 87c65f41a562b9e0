"""The part of Caffe's protobuf schema (``caffe.proto``) that the Caffe importer reads.

The schema is declared here as plain tables of Caffe's published field numbers and
built into message classes at import time (``descriptor_pb2.FileDescriptorProto`` in a
private descriptor pool, then ``message_factory``): no ``protoc`` step and no generated
file. It is proto2, like Caffe's, so unset fields read as Caffe's defaults and a
caffemodel's fields that are not declared here are kept as unknown fields instead of
failing the binary parse.

Covered: ``NetParameter`` (``layer`` = 100 and the legacy V1 ``layers`` = 2, net-level
``input`` / ``input_shape`` / ``input_dim``), ``LayerParameter``, ``V1LayerParameter``
(whose type is an enum), ``BlobProto`` / ``BlobShape``, the phase rules, and the
parameters of the layers the importer converts, plus the DeepCompression-caffe fork's
fields: ``ConvolutionParameter`` sparse_ratio = 19, class_num = 20 (default 256),
quantize_term = 21 and ``InnerProductParameter`` sparse_ratio = 7, class_num = 8
(default 32), quantize_term = 9.

Prototxt text is parsed strictly: a field this schema does not declare is an error
naming its line and column. The fork's README spells the flag ``quantization_term``;
protobuf text format matches field names exactly and has no alias mechanism (an alias
would need a second field with its own number, which real Caffe files never carry), so
that spelling is rejected with a message that says to write ``quantize_term``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from onnx_dc.errors import ConversionError

PACKAGE = "caffe"

# One field: (label, type, name, number, default or None[, "packed"]).
# ``type`` is a scalar type name, or the name of a message or enum declared below
# (a nested enum is written "Message.Enum").
_Field = tuple

_ENGINE = ("DEFAULT", "CAFFE", "CUDNN")

# Top-level enums.
_ENUMS: dict[str, tuple[str, ...] | dict[str, int]] = {
    "Phase": ("TRAIN", "TEST"),
}

# Messages: name -> (fields, nested enums). Nested enums keep value names such as MAX or
# DEFAULT scoped to their message, as in Caffe.
_MESSAGES: dict[str, tuple[list[_Field], dict[str, tuple[str, ...] | dict[str, int]]]] = {
    "BlobShape": ([("repeated", "int64", "dim", 1, None, "packed")], {}),
    "BlobProto": (
        [
            ("optional", "BlobShape", "shape", 7, None),
            ("repeated", "float", "data", 5, None, "packed"),
            ("repeated", "float", "diff", 6, None, "packed"),
            ("repeated", "double", "double_data", 8, None, "packed"),
            ("repeated", "double", "double_diff", 9, None, "packed"),
            ("optional", "int32", "num", 1, "0"),
            ("optional", "int32", "channels", 2, "0"),
            ("optional", "int32", "height", 3, "0"),
            ("optional", "int32", "width", 4, "0"),
        ],
        {},
    ),
    "FillerParameter": (
        [
            ("optional", "string", "type", 1, "constant"),
            ("optional", "float", "value", 2, "0"),
            ("optional", "float", "min", 3, "0"),
            ("optional", "float", "max", 4, "1"),
            ("optional", "float", "mean", 5, "0"),
            ("optional", "float", "std", 6, "1"),
            ("optional", "int32", "sparse", 7, "-1"),
            ("optional", "FillerParameter.VarianceNorm", "variance_norm", 8, "FAN_IN"),
        ],
        {"VarianceNorm": ("FAN_IN", "FAN_OUT", "AVERAGE")},
    ),
    "NetParameter": (
        [
            ("optional", "string", "name", 1, None),
            ("repeated", "string", "input", 3, None),
            ("repeated", "BlobShape", "input_shape", 8, None),
            ("repeated", "int32", "input_dim", 4, None),
            ("optional", "bool", "force_backward", 5, "false"),
            ("optional", "NetState", "state", 6, None),
            ("optional", "bool", "debug_info", 7, "false"),
            ("repeated", "LayerParameter", "layer", 100, None),
            ("repeated", "V1LayerParameter", "layers", 2, None),
        ],
        {},
    ),
    "NetState": (
        [
            ("optional", "Phase", "phase", 1, "TEST"),
            ("optional", "int32", "level", 2, "0"),
            ("repeated", "string", "stage", 3, None),
        ],
        {},
    ),
    "NetStateRule": (
        [
            ("optional", "Phase", "phase", 1, None),
            ("optional", "int32", "min_level", 2, None),
            ("optional", "int32", "max_level", 3, None),
            ("repeated", "string", "stage", 4, None),
            ("repeated", "string", "not_stage", 5, None),
        ],
        {},
    ),
    "ParamSpec": (
        [
            ("optional", "string", "name", 1, None),
            ("optional", "ParamSpec.DimCheckMode", "share_mode", 2, None),
            ("optional", "float", "lr_mult", 3, "1"),
            ("optional", "float", "decay_mult", 4, "1"),
        ],
        {"DimCheckMode": ("STRICT", "PERMISSIVE")},
    ),
    "LayerParameter": (
        [
            ("optional", "string", "name", 1, None),
            ("optional", "string", "type", 2, None),
            ("repeated", "string", "bottom", 3, None),
            ("repeated", "string", "top", 4, None),
            ("optional", "Phase", "phase", 10, None),
            ("repeated", "float", "loss_weight", 5, None),
            ("repeated", "ParamSpec", "param", 6, None),
            ("repeated", "BlobProto", "blobs", 7, None),
            ("repeated", "bool", "propagate_down", 11, None),
            ("repeated", "NetStateRule", "include", 8, None),
            ("repeated", "NetStateRule", "exclude", 9, None),
            ("optional", "TransformationParameter", "transform_param", 100, None),
            ("optional", "LossParameter", "loss_param", 101, None),
            ("optional", "AccuracyParameter", "accuracy_param", 102, None),
            ("optional", "BatchNormParameter", "batch_norm_param", 139, None),
            ("optional", "ConcatParameter", "concat_param", 104, None),
            ("optional", "ConvolutionParameter", "convolution_param", 106, None),
            ("optional", "DataParameter", "data_param", 107, None),
            ("optional", "DropoutParameter", "dropout_param", 108, None),
            ("optional", "EltwiseParameter", "eltwise_param", 110, None),
            ("optional", "FlattenParameter", "flatten_param", 135, None),
            ("optional", "InnerProductParameter", "inner_product_param", 117, None),
            ("optional", "InputParameter", "input_param", 143, None),
            ("optional", "LRNParameter", "lrn_param", 118, None),
            ("optional", "MemoryDataParameter", "memory_data_param", 119, None),
            ("optional", "PoolingParameter", "pooling_param", 121, None),
            ("optional", "ReLUParameter", "relu_param", 123, None),
            ("optional", "ReshapeParameter", "reshape_param", 133, None),
            ("optional", "ScaleParameter", "scale_param", 142, None),
            ("optional", "SigmoidParameter", "sigmoid_param", 124, None),
            ("optional", "SoftmaxParameter", "softmax_param", 125, None),
            ("optional", "TanHParameter", "tanh_param", 127, None),
        ],
        {},
    ),
    "V1LayerParameter": (
        [
            ("repeated", "string", "bottom", 2, None),
            ("repeated", "string", "top", 3, None),
            ("optional", "string", "name", 4, None),
            ("repeated", "NetStateRule", "include", 32, None),
            ("repeated", "NetStateRule", "exclude", 33, None),
            ("optional", "V1LayerParameter.LayerType", "type", 5, None),
            ("repeated", "BlobProto", "blobs", 6, None),
            ("repeated", "string", "param", 1001, None),
            ("repeated", "V1LayerParameter.DimCheckMode", "blob_share_mode", 1002, None),
            ("repeated", "float", "blobs_lr", 7, None),
            ("repeated", "float", "weight_decay", 8, None),
            ("repeated", "float", "loss_weight", 35, None),
            ("optional", "AccuracyParameter", "accuracy_param", 27, None),
            ("optional", "ConcatParameter", "concat_param", 9, None),
            ("optional", "ConvolutionParameter", "convolution_param", 10, None),
            ("optional", "DataParameter", "data_param", 11, None),
            ("optional", "DropoutParameter", "dropout_param", 12, None),
            ("optional", "EltwiseParameter", "eltwise_param", 24, None),
            ("optional", "InnerProductParameter", "inner_product_param", 17, None),
            ("optional", "LRNParameter", "lrn_param", 18, None),
            ("optional", "MemoryDataParameter", "memory_data_param", 22, None),
            ("optional", "PoolingParameter", "pooling_param", 19, None),
            ("optional", "ReLUParameter", "relu_param", 30, None),
            ("optional", "SigmoidParameter", "sigmoid_param", 38, None),
            ("optional", "SoftmaxParameter", "softmax_param", 39, None),
            ("optional", "TanHParameter", "tanh_param", 37, None),
            ("optional", "TransformationParameter", "transform_param", 36, None),
            ("optional", "LossParameter", "loss_param", 42, None),
        ],
        {
            "LayerType": {
                "NONE": 0,
                "ABSVAL": 35,
                "ACCURACY": 1,
                "ARGMAX": 30,
                "BNLL": 2,
                "CONCAT": 3,
                "CONTRASTIVE_LOSS": 37,
                "CONVOLUTION": 4,
                "DATA": 5,
                "DECONVOLUTION": 39,
                "DROPOUT": 6,
                "DUMMY_DATA": 32,
                "EUCLIDEAN_LOSS": 7,
                "ELTWISE": 25,
                "EXP": 38,
                "FLATTEN": 8,
                "HDF5_DATA": 9,
                "HDF5_OUTPUT": 10,
                "HINGE_LOSS": 28,
                "IM2COL": 11,
                "IMAGE_DATA": 12,
                "INFOGAIN_LOSS": 13,
                "INNER_PRODUCT": 14,
                "LRN": 15,
                "MEMORY_DATA": 29,
                "MULTINOMIAL_LOGISTIC_LOSS": 16,
                "MVN": 34,
                "POOLING": 17,
                "POWER": 26,
                "RELU": 18,
                "SIGMOID": 19,
                "SIGMOID_CROSS_ENTROPY_LOSS": 27,
                "SILENCE": 36,
                "SOFTMAX": 20,
                "SOFTMAX_LOSS": 21,
                "SPLIT": 22,
                "SLICE": 33,
                "TANH": 23,
                "WINDOW_DATA": 24,
                "THRESHOLD": 31,
            },
            "DimCheckMode": ("STRICT", "PERMISSIVE"),
        },
    ),
    "TransformationParameter": (
        [
            ("optional", "float", "scale", 1, "1"),
            ("optional", "bool", "mirror", 2, "false"),
            ("optional", "uint32", "crop_size", 3, "0"),
            ("optional", "string", "mean_file", 4, None),
            ("repeated", "float", "mean_value", 5, None),
            ("optional", "bool", "force_color", 6, "false"),
            ("optional", "bool", "force_gray", 7, "false"),
        ],
        {},
    ),
    "LossParameter": (
        [
            ("optional", "int32", "ignore_label", 1, None),
            ("optional", "LossParameter.NormalizationMode", "normalization", 3, "VALID"),
            ("optional", "bool", "normalize", 2, None),
        ],
        {"NormalizationMode": ("FULL", "VALID", "BATCH_SIZE", "NONE")},
    ),
    "AccuracyParameter": (
        [
            ("optional", "uint32", "top_k", 1, "1"),
            ("optional", "int32", "axis", 2, "1"),
            ("optional", "int32", "ignore_label", 3, None),
        ],
        {},
    ),
    "BatchNormParameter": (
        [
            ("optional", "bool", "use_global_stats", 1, None),
            ("optional", "float", "moving_average_fraction", 2, "0.999"),
            ("optional", "float", "eps", 3, "1e-5"),
        ],
        {},
    ),
    "ConcatParameter": (
        [("optional", "int32", "axis", 2, "1"), ("optional", "uint32", "concat_dim", 1, "1")],
        {},
    ),
    "ConvolutionParameter": (
        [
            ("optional", "uint32", "num_output", 1, None),
            ("optional", "bool", "bias_term", 2, "true"),
            ("repeated", "uint32", "pad", 3, None),
            ("repeated", "uint32", "kernel_size", 4, None),
            ("repeated", "uint32", "stride", 6, None),
            ("repeated", "uint32", "dilation", 18, None),
            ("optional", "uint32", "pad_h", 9, "0"),
            ("optional", "uint32", "pad_w", 10, "0"),
            ("optional", "uint32", "kernel_h", 11, None),
            ("optional", "uint32", "kernel_w", 12, None),
            ("optional", "uint32", "stride_h", 13, None),
            ("optional", "uint32", "stride_w", 14, None),
            ("optional", "uint32", "group", 5, "1"),
            ("optional", "FillerParameter", "weight_filler", 7, None),
            ("optional", "FillerParameter", "bias_filler", 8, None),
            ("optional", "ConvolutionParameter.Engine", "engine", 15, "DEFAULT"),
            ("optional", "int32", "axis", 16, "1"),
            ("optional", "bool", "force_nd_im2col", 17, "false"),
            # DeepCompression-caffe's additions.
            ("optional", "float", "sparse_ratio", 19, "0"),
            ("optional", "int32", "class_num", 20, "256"),
            ("optional", "bool", "quantize_term", 21, "false"),
        ],
        {"Engine": _ENGINE},
    ),
    "DataParameter": (
        [
            ("optional", "string", "source", 1, None),
            ("optional", "uint32", "batch_size", 4, None),
            ("optional", "uint32", "rand_skip", 7, "0"),
            ("optional", "DataParameter.DB", "backend", 8, "LEVELDB"),
            ("optional", "float", "scale", 2, "1"),
            ("optional", "string", "mean_file", 3, None),
            ("optional", "uint32", "crop_size", 5, "0"),
            ("optional", "bool", "mirror", 6, "false"),
            ("optional", "bool", "force_encoded_color", 9, "false"),
            ("optional", "uint32", "prefetch", 10, "4"),
        ],
        {"DB": ("LEVELDB", "LMDB")},
    ),
    "DropoutParameter": ([("optional", "float", "dropout_ratio", 1, "0.5")], {}),
    "EltwiseParameter": (
        [
            ("optional", "EltwiseParameter.EltwiseOp", "operation", 1, "SUM"),
            ("repeated", "float", "coeff", 2, None),
            ("optional", "bool", "stable_prod_grad", 3, "true"),
        ],
        {"EltwiseOp": ("PROD", "SUM", "MAX")},
    ),
    "FlattenParameter": (
        [("optional", "int32", "axis", 1, "1"), ("optional", "int32", "end_axis", 2, "-1")],
        {},
    ),
    "InnerProductParameter": (
        [
            ("optional", "uint32", "num_output", 1, None),
            ("optional", "bool", "bias_term", 2, "true"),
            ("optional", "FillerParameter", "weight_filler", 3, None),
            ("optional", "FillerParameter", "bias_filler", 4, None),
            ("optional", "int32", "axis", 5, "1"),
            ("optional", "bool", "transpose", 6, "false"),
            # DeepCompression-caffe's additions.
            ("optional", "float", "sparse_ratio", 7, "0"),
            ("optional", "int32", "class_num", 8, "32"),
            ("optional", "bool", "quantize_term", 9, "false"),
        ],
        {},
    ),
    "InputParameter": ([("repeated", "BlobShape", "shape", 1, None)], {}),
    "LRNParameter": (
        [
            ("optional", "uint32", "local_size", 1, "5"),
            ("optional", "float", "alpha", 2, "1"),
            ("optional", "float", "beta", 3, "0.75"),
            ("optional", "LRNParameter.NormRegion", "norm_region", 4, "ACROSS_CHANNELS"),
            ("optional", "float", "k", 5, "1"),
            ("optional", "LRNParameter.Engine", "engine", 6, "DEFAULT"),
        ],
        {"NormRegion": ("ACROSS_CHANNELS", "WITHIN_CHANNEL"), "Engine": _ENGINE},
    ),
    "MemoryDataParameter": (
        [
            ("optional", "uint32", "batch_size", 1, None),
            ("optional", "uint32", "channels", 2, None),
            ("optional", "uint32", "height", 3, None),
            ("optional", "uint32", "width", 4, None),
        ],
        {},
    ),
    "PoolingParameter": (
        [
            ("optional", "PoolingParameter.PoolMethod", "pool", 1, "MAX"),
            ("optional", "uint32", "pad", 4, "0"),
            ("optional", "uint32", "pad_h", 9, "0"),
            ("optional", "uint32", "pad_w", 10, "0"),
            ("optional", "uint32", "kernel_size", 2, None),
            ("optional", "uint32", "kernel_h", 5, None),
            ("optional", "uint32", "kernel_w", 6, None),
            ("optional", "uint32", "stride", 3, "1"),
            ("optional", "uint32", "stride_h", 7, None),
            ("optional", "uint32", "stride_w", 8, None),
            ("optional", "PoolingParameter.Engine", "engine", 11, "DEFAULT"),
            ("optional", "bool", "global_pooling", 12, "false"),
            ("optional", "PoolingParameter.RoundMode", "round_mode", 13, "CEIL"),
        ],
        {"PoolMethod": ("MAX", "AVE", "STOCHASTIC"), "Engine": _ENGINE, "RoundMode": ("CEIL", "FLOOR")},
    ),
    "ReLUParameter": (
        [
            ("optional", "float", "negative_slope", 1, "0"),
            ("optional", "ReLUParameter.Engine", "engine", 2, "DEFAULT"),
        ],
        {"Engine": _ENGINE},
    ),
    "ReshapeParameter": (
        [
            ("optional", "BlobShape", "shape", 1, None),
            ("optional", "int32", "axis", 2, "0"),
            ("optional", "int32", "num_axes", 3, "-1"),
        ],
        {},
    ),
    "ScaleParameter": (
        [
            ("optional", "int32", "axis", 1, "1"),
            ("optional", "int32", "num_axes", 2, "1"),
            ("optional", "FillerParameter", "filler", 3, None),
            ("optional", "bool", "bias_term", 4, "false"),
            ("optional", "FillerParameter", "bias_filler", 5, None),
        ],
        {},
    ),
    "SigmoidParameter": (
        [("optional", "SigmoidParameter.Engine", "engine", 1, "DEFAULT")],
        {"Engine": _ENGINE},
    ),
    "SoftmaxParameter": (
        [
            ("optional", "SoftmaxParameter.Engine", "engine", 1, "DEFAULT"),
            ("optional", "int32", "axis", 2, "1"),
        ],
        {"Engine": _ENGINE},
    ),
    "TanHParameter": ([("optional", "TanHParameter.Engine", "engine", 1, "DEFAULT")], {"Engine": _ENGINE}),
}

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}
_LABELS = {
    "optional": descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    "repeated": descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
}


def _enum_proto(name: str, values: tuple[str, ...] | dict[str, int]) -> descriptor_pb2.EnumDescriptorProto:
    numbered = values if isinstance(values, dict) else {v: i for i, v in enumerate(values)}
    proto = descriptor_pb2.EnumDescriptorProto(name=name)
    for value_name, number in numbered.items():
        proto.value.add(name=value_name, number=number)
    return proto


def _is_enum(type_name: str) -> bool:
    if type_name in _ENUMS:
        return True
    outer, _, inner = type_name.partition(".")
    return bool(inner) and inner in _MESSAGES[outer][1]


def _field_proto(spec: _Field) -> descriptor_pb2.FieldDescriptorProto:
    label, type_name, name, number, default = spec[:5]
    proto = descriptor_pb2.FieldDescriptorProto(name=name, number=number, label=_LABELS[label])
    if type_name in _SCALARS:
        proto.type = _SCALARS[type_name]
    else:
        proto.type = (
            descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
            if _is_enum(type_name)
            else descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        )
        proto.type_name = f".{PACKAGE}.{type_name}"
    if default is not None:
        proto.default_value = default
    if len(spec) > 5 and spec[5] == "packed":
        proto.options.packed = True
    return proto


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="onnx_dc/caffe_subset.proto", package=PACKAGE, syntax="proto2"
    )
    for name, values in _ENUMS.items():
        file_proto.enum_type.append(_enum_proto(name, values))
    for name, (fields, enums) in _MESSAGES.items():
        message = file_proto.message_type.add(name=name)
        for enum_name, values in enums.items():
            message.enum_type.append(_enum_proto(enum_name, values))
        message.field.extend(_field_proto(spec) for spec in fields)
    return file_proto


def _build_classes() -> dict[str, type]:
    # A private pool keeps this schema apart from any caffe_pb2 the user has imported.
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_file_proto().SerializeToString())
    classes = {}
    for name in _MESSAGES:
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        if hasattr(message_factory, "GetMessageClass"):
            classes[name] = message_factory.GetMessageClass(descriptor)
        else:  # protobuf < 4.22
            classes[name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return classes


_CLASSES = _build_classes()

NetParameter = _CLASSES["NetParameter"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
BlobProto = _CLASSES["BlobProto"]
BlobShape = _CLASSES["BlobShape"]

PHASE_TRAIN = 0
PHASE_TEST = 1

#: Spellings that are not Caffe fields but appear in documentation, with the real field.
MISSPELLED_FIELDS = {"quantization_term": "quantize_term"}


def message_class(name: str) -> type:
    """The message class of one Caffe message declared here, e.g. ``"PoolingParameter"``."""
    return _CLASSES[name]


def v1_type_name(number: int) -> str:
    """The enum value name (e.g. ``"INNER_PRODUCT"``) of a V1 layer type number."""
    return V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number[number].name


def parse_prototxt(text: str, source: str = "<prototxt>") -> Any:
    """Parse a net definition in protobuf text format into a ``NetParameter``.

    Args:
        text: the prototxt text.
        source: the file name used in error messages.

    Raises:
        ConversionError: one line with the file, line and column of the problem.
    """
    net = NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise ConversionError(_parse_error_message(exc, source)) from None
    return net


def _parse_error_message(exc: text_format.ParseError, source: str) -> str:
    line, column = exc.GetLine(), exc.GetColumn()
    detail = str(exc)
    # The message starts with "line:column : " when the parser knows the position.
    detail = re.sub(r"^\d+:\d+\s*:\s*", "", detail).strip()
    where = f"{source}:{line}:{column}" if line is not None else source
    unknown = re.search(r'has no field named "([^"]+)"', detail)
    if unknown and unknown.group(1) in MISSPELLED_FIELDS:
        name = unknown.group(1)
        return (
            f"{where}: {name!r} is not a Caffe field (some DeepCompression-caffe docs spell it so); "
            f"write {MISSPELLED_FIELDS[name]!r}"
        )
    if unknown and re.search(r'"caffe\.(V1)?LayerParameter"', detail):
        detail += " (onnx_dc's Caffe schema declares the parameters of the layers it converts only)"
    return f"{where}: prototxt syntax error: {detail}"


def read_prototxt(path: str | os.PathLike) -> Any:
    """Read and parse a ``.prototxt`` file into a ``NetParameter``.

    Raises:
        ConversionError: the file cannot be read or does not parse.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read prototxt ({_reason(exc)})") from None
    return parse_prototxt(text, str(path))


def read_caffemodel(path: str | os.PathLike) -> Any:
    """Read a binary ``.caffemodel`` (a serialized ``NetParameter``).

    Raises:
        ConversionError: the file cannot be read or is not a Caffe net.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read caffemodel ({_reason(exc)})") from None
    net = NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as exc:
        raise ConversionError(f"{path}: not a binary Caffe NetParameter ({exc})") from None
    if not net.layer and not net.layers:
        raise ConversionError(f"{path}: holds no layers; is it a binary .caffemodel (not a prototxt)?")
    return net


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
