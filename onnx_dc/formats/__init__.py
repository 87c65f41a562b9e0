"""File formats of onnx_dc: the packed, entropy-coded ``*.dcz`` (see docs/FORMAT.md)."""
