"""A weight read through several views (a fused QKV weight sliced or split for three MatMuls): statistics, masks,
reconstruction, GPTQ codes and the codebook refit work on every view, each with its own inputs.

Before, only the first view had statistics and activation pruning built its mask over that view's
elements alone: K and V ended all zeros and the output cosine was 0.000.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import finish_model, init
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc

WIDTH = 16


def attention_like(fused: bool | str, seed: int = 0) -> onnx.ModelProto:
    """x [N, 16] -> q, k, v = x Wq, x Wk, x Wv -> y = q * k + v; fused: W [16, 48] read through three Slices
    (``fused`` "split": one Split)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, .3, (WIDTH, 3 * WIDTH)).astype(np.float32)
    nodes, inits = [], []
    if fused == "split":
        inits.append(init("sizes", np.array([WIDTH] * 3, np.int64)))
        nodes.append(oh.make_node("Split", ["w_qkv", "sizes"], ["w_q", "w_k", "w_v"], name="split", axis=1))
    for k, n in enumerate("qkv"):
        if fused is True:
            inits += [init(f"start_{n}", np.array([WIDTH * k], np.int64)),
                      init(f"end_{n}", np.array([WIDTH * (k + 1)], np.int64)), init(f"axis_{n}", np.array([1], np.int64))]
            nodes.append(oh.make_node("Slice", ["w_qkv", f"start_{n}", f"end_{n}", f"axis_{n}"], [f"w_{n}"],
                                      name=f"slice_{n}"))
        elif not fused:
            inits.append(init(f"w_{n}", w[:, WIDTH * k : WIDTH * (k + 1)]))
        nodes.append(oh.make_node("MatMul", ["x", f"w_{n}"], [n], name=f"mm_{n}"))
    if fused:
        inits.append(init("w_qkv", w))
    nodes += [oh.make_node("Mul", ["q", "k"], ["qk"], name="qk"), oh.make_node("Add", ["qk", "v"], ["y"], name="y")]
    g = oh.make_graph(nodes, "qkv", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])], inits)
    return finish_model(g)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("qkv") / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).normal(size=(256, WIDTH)).astype(np.float32))
    return f"npz:{path}"


def _cosine(result) -> float:
    return result.fidelity.to_dict()["outputs"][0]["cosine"]


@pytest.mark.parametrize("scope,how", [("row", True), ("layer", True), ("row", "split")])
def test_no_slice_of_a_fused_weight_ends_all_zeros_and_fidelity_matches_the_unfused_weights(calib, scope, how):
    config = {"calib": {"prune_scope": scope}}
    fused = onnx_dc.compress(attention_like(how), calib=calib, sparse_ratio=0.5, class_num=32, config=config)
    plain = onnx_dc.compress(attention_like(False), calib=calib, sparse_ratio=0.5, class_num=32, config=config)
    w = fused.state.layers["w_qkv"].weights
    kept = [float((w[:, WIDTH * k : WIDTH * (k + 1)] != 0).mean()) for k in range(3)]
    assert all(0.3 < f < 0.7 for f in kept), kept
    assert abs(np.mean(kept) - 0.5) < 0.02
    assert _cosine(plain) > 0.8
    assert _cosine(fused) >= _cosine(plain) - 0.01, (_cosine(fused), _cosine(plain))


def test_every_view_of_a_fused_weight_has_its_own_statistics(calib):
    from onnx_dc.api import prepare
    from onnx_dc.calibrate import run_calibrated, start_calib

    state = prepare(attention_like(True), sparse_ratio=0.5, class_num=32)
    run = run_calibrated(state, start_calib(state, calib, None))
    st = run.collected.stats["w_qkv"]
    assert len(st.pieces()) == 3
    covered = np.sort(np.concatenate([p.view.index.ravel() for p in st.pieces()]))
    np.testing.assert_array_equal(covered, np.arange(WIDTH * 3 * WIDTH))  # each element in exactly one view


def tied_embeddings(seed: int = 0) -> onnx.ModelProto:
    """ids [N, 8] -> Gather (emb [50, 16]) -> MatMul with emb transposed (the tied output layer) -> logits."""
    rng = np.random.default_rng(seed)
    g = oh.make_graph([oh.make_node("Gather", ["emb", "ids"], ["h"], name="embed"),
                       oh.make_node("Transpose", ["emb"], ["emb_t"], name="tie", perm=[1, 0]),
                       oh.make_node("MatMul", ["h", "emb_t"], ["logits"], name="lm_head")], "tied",
                      [oh.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
                      [oh.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8, 50])],
                      [init("emb", rng.normal(0, 1, (50, 16)).astype(np.float32))])
    return finish_model(g)


def test_a_weight_shared_by_a_gather_and_a_matmul_is_compressed_once_and_decoded_once(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "ids.npz", ids=rng.integers(0, 50, (64, 8)))
    result = onnx_dc.compress(tied_embeddings(), tmp_path / "tied.dc.onnx", sparse_ratio=0.5, class_num=16,
                              calib=f"npz:{tmp_path / 'ids.npz'}")
    (row,) = result.report.layers
    assert row.weight == "emb" and row.op_type == "Gather,MatMul" and row.kept == 400
    written = onnx.load(tmp_path / "tied.dc.onnx")
    decoders = [n for n in written.graph.node if n.domain not in ("", "ai.onnx")]
    assert len(decoders) == 1  # one decoder feeds the lookup and the output layer
    assert _cosine(result) > 0.9
