"""ONNX graph code: loading and saving models, finding weights, the onnx_dc decoder functions."""
