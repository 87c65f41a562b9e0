"""Token inputs ([batch, sequence, hidden]) are counted over the real tokens only: the attention mask's.

Padding positions (69% of minilm's sentences.npz) would otherwise weigh as much as words in every
MatMul's statistics. A small token model (embedding lookup, then a MatMul) checks the collected
sums against NumPy over the unmasked positions.
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import finish_model, init
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.api import prepare
from onnx_dc.data.calib import Samples, token_mask
from onnx_dc.runtime.collect import Collector

VOCAB, HIDDEN, SEQ = 12, 6, 7


def token_model(seed: int = 0) -> onnx.ModelProto:
    """input_ids, attention_mask [N, 7] -> Gather (table [12, 6]; the pad token 0's row is large) -> MatMul w
    -> y [N, 7, 4], multiplied by the mask (as pooling would)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
    table[0] = 50.0  # padding: would dominate every statistic
    g = oh.make_graph([oh.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
                       oh.make_node("MatMul", ["h", "w"], ["z"], name="dense"),
                       oh.make_node("Cast", ["attention_mask"], ["m"], name="cast", to=TensorProto.FLOAT),
                       oh.make_node("Unsqueeze", ["m", "last"], ["m3"], name="m3"),
                       oh.make_node("Mul", ["z", "m3"], ["y"], name="y")], "tokens",
                      [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", SEQ]),
                       oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", SEQ])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SEQ, 4])],
                      [init("table", table), init("w", rng.normal(0, 1, (HIDDEN, 4)).astype(np.float32)),
                       init("last", np.array([2], np.int64))])
    return finish_model(g)


def token_feed(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and a mask of ``n`` sequences of 2..7 real tokens, padded with token 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return np.where(mask == 1, rng.integers(1, VOCAB, (n, SEQ)), 0), mask


def test_matmul_statistics_count_the_real_tokens_only():
    model = token_model()
    ids, mask = token_feed(20)
    assert token_mask({"input_ids": ids, "attention_mask": mask}) is not None
    samples = Samples({"input_ids": ids[:, None], "attention_mask": mask[:, None]}, stackable=True)
    state = prepare(model, sparse_ratio=0.5, class_num=16)
    stats = Collector(state, samples, batch_size=8).collect(["w"])["w"].stats
    table = onnx.numpy_helper.to_array(model.graph.initializer[0])
    real = table[ids[mask == 1]]
    assert stats.count == mask.sum()
    np.testing.assert_allclose(stats.second_moment()[0], (real.astype(np.float64) ** 2).mean(axis=0), rtol=1e-6)


def test_token_outputs_are_compared_at_the_real_tokens_and_are_not_class_scores():
    from onnx_dc.runtime.fidelity import measure_fidelity

    model = token_model()
    ids, mask = token_feed(16, seed=2)
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    table = onnx.numpy_helper.to_array(changed.graph.initializer[0]).copy()
    table[0] = -50.0  # only the padding's row differs: no real token sees it
    changed.graph.initializer[0].CopyFrom(init("table", table))
    changed.graph.node[-1].CopyFrom(oh.make_node("Identity", ["z"], ["y"], name="y"))  # padding positions differ
    model.graph.node[-1].CopyFrom(oh.make_node("Identity", ["z"], ["y"], name="y"))
    samples = Samples({"input_ids": ids[:, None], "attention_mask": mask[:, None]}, stackable=True)
    out = measure_fidelity(model, changed, samples).to_dict()["outputs"][0]
    assert out["cosine"] > 0.999999 and out["rel_l2"] < 1e-6
    assert out.get("top1_agreement") is None
