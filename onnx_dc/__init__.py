"""onnx_dc: Deep Compression (pruning, trained weight sharing, Huffman coding) for ONNX models.

Typical use::

    import onnx_dc
    result = onnx_dc.compress("model.onnx", "model.dc.onnx", sparse_ratio=0.9, class_num=32)
    print(result.report.to_table())
    session = onnx_dc.InferenceSession("model.dc.onnx")
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

from onnx_dc.errors import ConfigError, DataError, FormatError, ModelError, OnnxDcError, TrainingUnavailable

if TYPE_CHECKING:  # the names below are imported on first use (see _EXPORTS)
    from onnx_dc.api import (
        CompressResult, compress, export_dense, finetune, finish, import_caffe, pack, prepare, report, unpack,
    )
    from onnx_dc.calibrate import fidelity
    from onnx_dc.config import CentroidInit, Config, Form, Settings, load_config, parse_config
    from onnx_dc.data.datasets import Preprocess, load_dataset, parse_data_spec
    from onnx_dc.runtime.evaluate import EvalResult, evaluate
    from onnx_dc.runtime.session import InferenceSession

__version__ = "0.1.0"

# The module of each public name. A name is imported when first used, so that importing the
# package (as ``onnx-dc --version`` and ``--help`` do) does not load onnx and onnxruntime.
_EXPORTS = {
    "onnx_dc.api": ("CompressResult", "compress", "export_dense", "finetune", "finish", "import_caffe", "pack",
                    "prepare", "report", "unpack"),
    "onnx_dc.calibrate": ("fidelity",),
    "onnx_dc.config": ("CentroidInit", "Config", "Form", "Settings", "load_config", "parse_config"),
    "onnx_dc.data.datasets": ("Preprocess", "load_dataset", "parse_data_spec"),
    "onnx_dc.runtime.evaluate": ("EvalResult", "evaluate"),
    "onnx_dc.runtime.session": ("InferenceSession",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Facade(types.ModuleType):
    """The package module. Importing a submodule binds its name on the package; where a public function has
    the same name (``onnx_dc.report``, the function, and ``onnx_dc/report.py``), the function keeps it."""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade

__all__ = [
    "CentroidInit", "CompressResult", "Config", "ConfigError", "DataError", "EvalResult", "Form", "FormatError",
    "InferenceSession", "ModelError", "OnnxDcError", "Preprocess", "Settings", "TrainingUnavailable", "compress",
    "evaluate", "export_dense", "fidelity", "finetune", "finish",
    "import_caffe", "load_config", "load_dataset", "pack", "parse_config", "parse_data_spec", "prepare", "report",
    "unpack",
]
