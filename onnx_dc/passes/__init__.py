"""Compression passes over a :class:`~onnx_dc.passes.state.CompressionState`.

Data flows one way: ``prune`` -> [fine-tune] -> ``share`` -> [fine-tune codebooks] -> ``lower``.
Each pass module opens with the transformation it applies, as math.
"""
