"""Fidelity that fits the output: top-1 agreement for class scores, nearest-neighbour agreement for
embeddings, cosine alone for everything else (maps, token outputs, audio)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_dc.runtime.fidelity import OutputSums, is_class_scores, is_embedding, neighbour_agreement

rng = np.random.default_rng(0)


def unit_rows(n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("y,name,kind", [
    (rng.normal(size=(8, 10)).astype(np.float32), "Plus214_Output_0", "scores"),  # a classifier head's logits
    (softmax(rng.normal(size=(2, 4420, 2))).astype(np.float32), "scores", "scores"),  # per-anchor softmax
    (rng.normal(size=(2, 7, 5)).astype(np.float32), "logits", "scores"),  # per-token logits, named so
    (unit_rows(8, 384), "sentence_embedding", "embedding"),  # L2-normalised rows
    (unit_rows(8, 384), "output", "embedding"),  # unit rows whatever the name
    (3 * rng.normal(size=(8, 512)).astype(np.float32), "image_embeds", "embedding"),  # named, not normalised
    (rng.normal(size=(2, 7, 384)).astype(np.float32), "token_embeddings", "other"),  # a token output
    (rng.normal(size=(1, 1, 64, 64)).astype(np.float32), "map", "other"),  # an image
])
def test_each_output_kind_gets_its_own_agreement(y, name, kind):
    embedding = is_embedding(y, name)
    scores = not embedding and is_class_scores(y, name)
    assert {"scores": (False, True), "embedding": (True, False), "other": (False, False)}[kind] == (embedding, scores)
    sums = OutputSums(name=name)
    sums.add(y, y + 1e-3 * rng.normal(size=y.shape).astype(np.float32))
    result = sums.result(name)
    assert (result.top1 is not None) == (kind == "scores")
    assert (result.neighbours is not None) == (kind == "embedding")
    assert result.agreement().startswith({"scores": "top-1", "embedding": "NN", "other": "-"}[kind])


def test_nearest_neighbour_agreement_counts_the_rows_whose_neighbour_moved():
    # three pairs of close rows: each row's nearest neighbour is its pair
    base = unit_rows(3, 16)
    y = np.concatenate([base, base + 0.01 * unit_rows(3, 16)])
    assert neighbour_agreement(y, y) == 1.0
    moved = y.copy()
    moved[3] = y[1] + 0.001 * unit_rows(1, 16)[0]  # row 3 now sits on row 1: rows 0, 1 and 3 change neighbours
    assert neighbour_agreement(y, moved) == pytest.approx(3 / 6)
    assert neighbour_agreement(y[:2], y[:2]) is None  # two rows: no choice of neighbour to agree on


def test_embedding_rows_across_batches_are_compared_together():
    y = unit_rows(40, 32)
    sums = OutputSums(name="emb")
    for s in range(0, 40, 8):
        sums.add(y[s : s + 8], y[s : s + 8])
    assert sums.result("emb").neighbours == 1.0 and sums.kept == 40
