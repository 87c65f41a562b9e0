"""onnx_dc: Deep Compression (pruning, trained weight sharing, Huffman coding) for ONNX models.

Typical use::

    import onnx_dc
    result = onnx_dc.compress("model.onnx", "model.dc.onnx", sparse_ratio=0.9, class_num=32)
    print(result.report.to_table())
    session = onnx_dc.InferenceSession("model.dc.onnx")
"""

from onnx_dc.api import CompressResult, compress, finetune, finish, import_caffe, pack, prepare, report, unpack
from onnx_dc.calibrate import fidelity
from onnx_dc.config import CentroidInit, Config, Form, Settings, load_config, parse_config
from onnx_dc.data.datasets import Preprocess, load_dataset, parse_data_spec
from onnx_dc.errors import ConfigError, DataError, FormatError, ModelError, OnnxDcError, TrainingUnavailable
from onnx_dc.runtime.evaluate import EvalResult, evaluate
from onnx_dc.runtime.session import InferenceSession

__version__ = "0.1.0"

__all__ = [
    "CentroidInit", "CompressResult", "Config", "ConfigError", "DataError", "EvalResult", "Form", "FormatError",
    "InferenceSession", "ModelError", "OnnxDcError", "Preprocess", "Settings", "TrainingUnavailable", "compress",
    "evaluate", "fidelity", "finetune", "finish",
    "import_caffe", "load_config", "load_dataset", "pack", "parse_config", "parse_data_spec", "prepare", "report",
    "unpack",
]
