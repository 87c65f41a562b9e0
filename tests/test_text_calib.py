"""Calibration from text: ``--calib text:FILE --tokenizer tokenizer.json [--max-length N]``.

minilm's sentences.npz was tokenized by the model's own tokenizer in Python (export.py); the same
sentences read from a text file must give the same input_ids / attention_mask / token_type_ids.
Bad input (no tokenizer, a model without token inputs, an empty file) stops with one line, exit 2,
before any work.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, SHARED_DATA, finish_model, init, shared_path
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.data.calib import load_calib, model_inputs, parse_calib_spec
from onnx_dc.data.text import text_samples
from onnx_dc.errors import DataError

MINILM = SHARED_DATA / "real" / "minilm"
SEP, CLS = 102, 101  # the BERT uncased vocabulary's [SEP] and [CLS]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_dc", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def minilm() -> dict:
    shared_path(MINILM / "minilm.onnx")
    model = onnx.load(str(MINILM / "minilm.onnx"), load_external_data=False)
    return {"model": model, "inputs": model_inputs(model), "npz": np.load(MINILM / "sentences.npz")}


@pytest.fixture(scope="module")
def sentences(minilm, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(str(t) for t in minilm["npz"]["text"]) + "\n", encoding="utf-8")
    return str(path)


def test_text_lines_tokenize_as_the_models_own_tokenizer_did(minilm, sentences):
    arrays = text_samples(sentences, str(MINILM / "tokenizer.json"), None, minilm["inputs"])
    z = minilm["npz"]
    assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    length = arrays["input_ids"].shape[-1]
    assert length == int(z["attention_mask"].sum(axis=1).max())  # padded to the longest sentence
    for name, got in arrays.items():
        assert got.shape == (len(z["text"]), 1, length) and got.dtype == np.int64
        np.testing.assert_array_equal(got[:, 0], z[name][:, :length], err_msg=name)
        assert not z[name][:, length:].any()  # the npz's extra columns are padding only


def test_text_calibration_splits_like_any_sample_file(minilm, sentences):
    data = load_calib(parse_calib_spec(f"text:{sentences}", tokenizer=str(MINILM / "tokenizer.json"), limit=32),
                      minilm["model"])
    assert len(data.calib) == 32 and len(data.heldout) == len(minilm["npz"]["text"]) // 5
    assert data.calib.stackable  # [batch, sequence] inputs with a dynamic batch: batches of samples
    assert data.summary().startswith(f"text:{sentences}: 32 calibration")


def test_max_length_cuts_every_line_and_keeps_the_closing_token(minilm, sentences):
    arrays = text_samples(sentences, str(MINILM / "tokenizer.json"), 8, minilm["inputs"])
    ids, mask = arrays["input_ids"][:, 0], arrays["attention_mask"][:, 0]
    assert ids.shape[1] == 8
    full = mask.all(axis=1)
    assert full.any() and (ids[full, 0] == CLS).all() and (ids[full, -1] == SEP).all()


def fixed_length_model(length: int) -> onnx.ModelProto:
    """input_ids int64 [1, length] -> embedding -> ReduceMean: a model that fixes its sequence length."""
    rng = np.random.default_rng(0)
    g = oh.make_graph([oh.make_node("Gather", ["table", "input_ids"], ["h"]),
                       oh.make_node("ReduceMean", ["h"], ["y"], axes=[1])], "fixed",
                      [oh.make_tensor_value_info("input_ids", TensorProto.INT64, [1, length])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])],
                      [init("table", rng.normal(0, 1, (30522, 8)).astype(np.float32))])
    return finish_model(g, opset=17)


def test_a_fixed_sequence_length_pads_every_sample_to_it(tmp_path):
    tokenizer = shared_path(MINILM / "tokenizer.json")
    text = tmp_path / "t.txt"
    text.write_text("a short line\n\n   \nanother, slightly longer line of text\n", encoding="utf-8")
    arrays = text_samples(str(text), str(tokenizer), None, model_inputs(fixed_length_model(16)))
    assert arrays["input_ids"].shape == (2, 1, 16)  # blank lines are no samples
    with pytest.raises(DataError, match="--max-length 32 is longer than the model's fixed sequence length 16"):
        text_samples(str(text), str(tokenizer), 32, model_inputs(fixed_length_model(16)))


BAD = [
    (["--calib", "text:{text}"], "needs --tokenizer tokenizer.json"),
    (["--calib", "text:{text}", "--tokenizer", "{tmp}/none.json"], "none.json: no such file"),
    (["--calib", "text:{tmp}/empty.txt", "--tokenizer", "{tok}"], "the file holds no text"),
    (["--calib", "text:{tmp}/missing.txt", "--tokenizer", "{tok}"], "missing.txt: no such file"),
    (["--calib", "text:{text}", "--tokenizer", "{text}"], "not a tokenizer.json the tokenizers package reads"),
    (["--calib", "npz:{tmp}/x.npz", "--tokenizer", "{tok}"], "--tokenizer and --max-length apply to --calib text"),
    (["--tokenizer", "{tok}"], "need --calib"),
    (["--calib", "text:{text}", "--tokenizer", "{tok}", "--max-length", "0"], "--max-length"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[m for _, m in BAD])
def test_bad_text_calibration_is_one_line_and_exit_2_before_any_work(tmp_path, flags, message):
    tok = shared_path(MINILM / "tokenizer.json")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    text = tmp_path / "t.txt"
    text.write_text("one line\n", encoding="utf-8")
    model = tmp_path / "tokens.onnx"
    onnx.save(fixed_length_model(16), str(model))
    out = tmp_path / "out.dc.onnx"
    args = [f.format(text=text, tmp=tmp_path, tok=tok) for f in flags]
    r = cli("compress", str(model), "-o", str(out), "--class-num", "16", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_a_model_without_token_inputs_is_refused_by_name(tmp_path):
    tok = shared_path(MINILM / "tokenizer.json")
    text = tmp_path / "t.txt"
    text.write_text("one line\n", encoding="utf-8")
    lenet = ROOT / "models" / "lenet5.onnx"
    r = cli("compress", str(lenet), "-o", str(tmp_path / "o.dc.onnx"), "--calib", f"text:{text}", "--tokenizer", str(tok))
    assert r.returncode == 2 and "the model has no token-id input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
