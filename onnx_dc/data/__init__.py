"""Datasets for evaluation and fine-tuning, and the preprocessing a model expects."""

from onnx_dc.data.datasets import Dataset, DataSpec, Preprocess, load_dataset, parse_data_spec

__all__ = ["Dataset", "DataSpec", "Preprocess", "load_dataset", "parse_data_spec"]
