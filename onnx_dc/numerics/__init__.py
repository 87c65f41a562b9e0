"""Pure numerics: NumPy only, no ONNX imports (masks, k-means, bit packing, sparse indices, entropy coding)."""
