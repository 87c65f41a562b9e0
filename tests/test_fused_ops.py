"""The fused com.microsoft ops onnxruntime's transformer optimizer writes: their float weights are compressed,
or each op's parameters are listed with one reason (onnx_dc.graph.ops).

Attention's [hidden, 3 hidden] weight is a matrix product over its input: compressed, data-aware,
and the compressed model runs in onnxruntime. SkipLayerNormalization, FastGelu and
EmbedLayerNormalization keep their parameters (the last: its tables are read inside the fused op),
and MatMulNBits is already quantized.
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import init
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc

H, S, VOCAB = 32, 6, 40


def fused_bert(seed: int = 0) -> onnx.ModelProto:
    """EmbedLayerNormalization -> Attention -> SkipLayerNormalization -> MatMul -> FastGelu -> MatMulNBits."""
    rng = np.random.default_rng(seed)
    nodes = [
        oh.make_node("EmbedLayerNormalization", ["input_ids", "segment_ids", "word", "position", "segment", "eln_gamma",
                                                "eln_beta", "attention_mask"], ["x", "mask_index"], name="embed",
                     domain="com.microsoft"),
        oh.make_node("Attention", ["x", "w", "b", "mask_index"], ["a"], name="attn", domain="com.microsoft",
                     num_heads=4),
        oh.make_node("SkipLayerNormalization", ["a", "x", "gamma", "beta"], ["n"], name="sln", domain="com.microsoft"),
        oh.make_node("MatMul", ["n", "w2"], ["f"], name="ffn"),
        oh.make_node("FastGelu", ["f", "b2"], ["g"], name="gelu", domain="com.microsoft"),
        oh.make_node("MatMulNBits", ["g", "q", "q_scales"], ["y"], name="q4", domain="com.microsoft",
                     K=64, N=8, bits=4, block_size=32),
    ]
    inits = [init("word", rng.normal(0, 1, (VOCAB, H)).astype(np.float32)),
             init("position", rng.normal(0, 1, (S, H)).astype(np.float32)),
             init("segment", rng.normal(0, 1, (2, H)).astype(np.float32)),
             init("eln_gamma", np.ones(H, np.float32)), init("eln_beta", np.zeros(H, np.float32)),
             init("w", rng.normal(0, .2, (H, 3 * H)).astype(np.float32)), init("b", np.zeros(3 * H, np.float32)),
             init("gamma", np.ones(H, np.float32)), init("beta", np.zeros(H, np.float32)),
             init("w2", rng.normal(0, .2, (H, 64)).astype(np.float32)), init("b2", np.zeros(64, np.float32)),
             init("q", rng.integers(0, 255, (8, 2, 16)).astype(np.uint8)),
             init("q_scales", np.full(16, 0.01, np.float32))]
    ints = [oh.make_tensor_value_info(n, TensorProto.INT32, ["N", S])
            for n in ("input_ids", "segment_ids", "attention_mask")]
    g = oh.make_graph(nodes, "fused", ints, [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", S, 8])], inits)
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def test_fused_transformer_ops_are_compressed_or_named_with_a_reason(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "tokens.npz", input_ids=rng.integers(0, VOCAB, (48, S)).astype(np.int32),
             segment_ids=np.zeros((48, S), np.int32), attention_mask=np.ones((48, S), np.int32))
    result = onnx_dc.compress(fused_bert(), tmp_path / "fused.dc.onnx", sparse_ratio=0.5, class_num=16,
                              calib=f"npz:{tmp_path / 'tokens.npz'}")
    rows = {r.weight: r for r in result.report.layers}
    assert set(rows) == {"w", "w2"} and rows["w"].op_type == "Attention" and rows["w"].kept == H * 3 * H // 2
    assert "w" in result.calib.to_dict()["prune_by_activation"]  # statistics reached the fused op's input
    reasons = {(node, tensor): why for node, _, tensor, why in result.report.skipped}
    assert "read inside the fused op" in reasons[("embed", "word")]
    assert "stay float32" in reasons[("sln", "gamma")] and "stay float32" in reasons[("gelu", "b2")]
    assert any("already quantized" in note and "MatMulNBits" in note for note in result.report.notes)
    assert result.fidelity.to_dict()["outputs"][0]["cosine"] > 0.8  # the compressed model runs in onnxruntime
