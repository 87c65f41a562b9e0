"""Embedding tables (Gather) are compressed by how often each row is read.

The statistics count each row's index among the real tokens (the attention mask); read rows are
pruned by ``(1 + count) w^2`` and share values by k-means weighted by ``1 + count``; rows no sample
reaches keep the data-free result (magnitude pruning among themselves). Position embeddings, a
constant table of ids sliced to the input's length, are a lookup too; a table tied to a MatMul is
left to the data-free way with its reason.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from conftest import finish_model, init
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.api import compress, prepare
from onnx_dc.data.calib import Samples
from onnx_dc.graph.weights import find_weights
from onnx_dc.passes.data_aware import compress_plain
from onnx_dc.passes.lookup import compress_lookup, row_counts
from onnx_dc.passes.prune import prune_layer
from onnx_dc.runtime.collect import Collector

VOCAB, WIDTH, SEQ, POSITIONS = 300, 16, 12, 40


def embedding_model(seed: int = 0) -> onnx.ModelProto:
    """BERT's embeddings in small: word table [300, 16] by input_ids, position table [40, 16] by
    Slice(position_ids [1, 40], 0, sequence length), summed, times a MatMul, masked."""
    rng = np.random.default_rng(seed)
    nodes = [oh.make_node("Gather", ["word", "input_ids"], ["w_e"], name="word_embeddings"),
             oh.make_node("Shape", ["input_ids"], ["shape"], name="shape"),
             oh.make_node("Gather", ["shape", "axis1"], ["length"], name="length", axis=0),
             oh.make_node("Unsqueeze", ["length", "zero"], ["end"], name="end"),
             oh.make_node("Slice", ["position_ids", "zero", "end", "one"], ["positions"], name="positions"),
             oh.make_node("Gather", ["position", "positions"], ["p_e"], name="position_embeddings"),
             oh.make_node("Add", ["w_e", "p_e"], ["h"], name="sum"),
             oh.make_node("MatMul", ["h", "dense"], ["z"], name="dense"),
             oh.make_node("Cast", ["attention_mask"], ["m"], name="cast", to=TensorProto.FLOAT),
             oh.make_node("Unsqueeze", ["m", "last"], ["m3"], name="m3"),
             oh.make_node("Mul", ["z", "m3"], ["y"], name="y")]
    g = oh.make_graph(nodes, "embeddings",
                      [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"]),
                       oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 8])],
                      [init("word", rng.normal(0, 1, (VOCAB, WIDTH)).astype(np.float32)),
                       init("position", rng.normal(0, 1, (POSITIONS, WIDTH)).astype(np.float32)),
                       init("position_ids", np.arange(POSITIONS, dtype=np.int64)[None]),
                       init("dense", rng.normal(0, 1, (WIDTH, 8)).astype(np.float32)),
                       init("zero", np.array([0], np.int64)), init("one", np.array([1], np.int64)),
                       init("axis1", np.array(1, np.int64)),
                       init("last", np.array([2], np.int64))])
    return finish_model(g)


def token_samples(n: int, seed: int) -> tuple[Samples, np.ndarray, np.ndarray]:
    """``n`` sequences of 3..12 Zipf-distributed tokens (ids 1..200; 201..299 never occur), padded with 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.minimum(rng.zipf(1.3, (n, SEQ)), 200)
    ids = np.where(mask == 1, ids, 0)
    return Samples({"input_ids": ids[:, None], "attention_mask": mask[:, None]}, stackable=True), ids, mask


def test_position_ids_sliced_to_the_input_length_are_a_lookup():
    sites = {s.name for s in find_weights(embedding_model()).sites}
    assert {"word", "position", "dense"} <= sites  # before: the position table was "constant indices"


def test_row_counts_are_the_real_tokens_and_positions():
    state = prepare(embedding_model(), sparse_ratio=0.5, class_num=16)
    samples, ids, mask = token_samples(50, 1)
    stats = Collector(state, samples, batch_size=16).collect(["word", "position"])
    np.testing.assert_array_equal(row_counts(stats["word"]), np.bincount(ids[mask == 1], minlength=VOCAB))
    assert row_counts(stats["word"])[0] == 0  # padding is token 0: never counted
    want = np.zeros(POSITIONS)
    want[:SEQ] = mask.sum(axis=0)
    np.testing.assert_array_equal(row_counts(stats["position"]), want)


def test_rows_no_sample_reaches_keep_the_data_free_mask_and_read_rows_lose_less():
    state = prepare(embedding_model(), sparse_ratio=0.5, class_num=16)
    samples, _, _ = token_samples(80, 2)
    stats = Collector(state, samples, batch_size=16).collect(["word"])["word"]
    counts = row_counts(stats)
    unread = counts == 0
    table = state.layers["word"].weights.copy()

    by_counts = copy.deepcopy(state.layers["word"])
    compress_lookup(by_counts, stats)
    assert by_counts.mask.mean() == np.float64(0.5)  # the planned ratio, over read and unread rows alike
    # unread rows: magnitude pruning among themselves, as the data-free way prunes
    alone = copy.deepcopy(state.layers["word"])
    alone.weights = table[unread]
    prune_layer(alone)
    np.testing.assert_array_equal(by_counts.mask[unread], alone.mask)
    assert len(np.unique(by_counts.weights)) <= 16 + 1  # shared values (and the pruned zeros)

    free = copy.deepcopy(state.layers["word"])
    compress_plain(free)
    # the error on new samples of the same text, weighted by how often they read each row
    _, held_ids, held_mask = token_samples(200, 3)
    held = np.bincount(held_ids[held_mask == 1], minlength=VOCAB)

    def error(layer) -> float:
        return float(held @ np.square(layer.weights - table).sum(axis=1))

    assert error(by_counts) < 0.8 * error(free), (error(by_counts), error(free))


def test_compress_with_token_samples_names_the_token_counts_pass(tmp_path):
    samples, ids, mask = token_samples(100, 4)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask)
    result = compress(embedding_model(), sparse_ratio=0.5, class_num=16, calib=f"npz:{tmp_path / 'tokens.npz'}")
    data_aware = result.calib.result.to_dict()
    assert set(data_aware["token_counts"]) == {"word", "position"}
    assert "token_counts" in data_aware["passes"] and "word" not in data_aware["without_statistics"]


def test_a_table_tied_to_a_matmul_goes_the_data_free_way_with_its_reason():
    rng = np.random.default_rng(0)
    g = oh.make_graph([oh.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
                       oh.make_node("Transpose", ["table"], ["table_t"], name="t"),
                       oh.make_node("MatMul", ["h", "table_t"], ["y"], name="lm_head")], "tied",
                      [oh.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 50])],
                      [init("table", rng.normal(0, 1, (50, 8)).astype(np.float32))])
    state = prepare(finish_model(g), sparse_ratio=0.5, class_num=16)
    samples = Samples({"ids": rng.integers(0, 50, (10, 1, 5))}, stackable=True)
    collector = Collector(state, samples)
    assert "table" not in collector.views
    assert "read both as a lookup table and as a matrix" in collector.unsupported["table"]
