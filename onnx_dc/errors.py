"""Typed errors that speak to the user.

Every error raised for bad input derives from :class:`OnnxDcError`. The CLI prints
``onnx-dc: <message>`` on one line and exits with code 2; the Python API lets them
propagate. Messages name the file, node or setting and say what to do.
"""

from __future__ import annotations


class OnnxDcError(Exception):
    """Base class for all user-facing errors of onnx_dc."""


class ModelError(OnnxDcError):
    """The input model cannot be read or has nothing we can work on."""


class ConfigError(OnnxDcError):
    """A compression setting or config file is invalid for the given model."""


class DataError(OnnxDcError):
    """A dataset spec or dataset file is invalid."""


class FormatError(OnnxDcError):
    """A packed ``.dcz`` file is malformed, truncated or fails a checksum."""


class ConversionError(OnnxDcError):
    """A foreign model (Caffe, ...) cannot be converted."""


class TrainingUnavailable(OnnxDcError):
    """Fine-tuning was asked for but onnxruntime-training is not installed."""


class ArgumentError(OnnxDcError):
    """A command-line argument (path, number, shape) is invalid; found before any work is done."""
