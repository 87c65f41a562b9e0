"""Running models in onnxruntime: sessions (from .onnx, .dc.onnx or .dcz) and accuracy."""
