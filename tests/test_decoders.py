"""The decoder functions in onnxruntime: bit-exact weights at every width, and folded at session creation.

Every code width 1..16 in the dense and sparse forms, and every index width in the sparse
forms, through the functions specialised to the widths and through the generic ones (widths
read from the node's attributes, at opset 13, their minimum): the weight onnxruntime
rebuilds equals codebook[codes] (or the stored values) bit for bit, in onnxruntime 1.19
(this environment) and the newest (``.venv-ort-latest``, see tests/test_ort_latest.py); and
the optimized graph holds no decoder op any more.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from test_ort_latest import latest_python

from onnx_dc.config import Settings
from onnx_dc.graph import decoders, layout
from onnx_dc.numerics.bitpack import pack_bits
from onnx_dc.numerics.sparse import encode_positions

SHAPE = (37, 29)  # 1073 elements: not a multiple of 8, so padding and slicing are exercised
OPSET = 17
GENERIC_OPSET = 13  # the generic bodies are valid from opset 13 on

RUNNER = """
import json, sys, numpy as np, onnxruntime as ort
job = json.load(open(sys.argv[1]))
out = {"version": ort.__version__, "cases": {}}
for name, path in job.items():
    so = ort.SessionOptions()
    so.optimized_model_filepath = path + ".opt.onnx"
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.eye(sess.get_inputs()[0].shape[1], dtype=np.float32)
    np.save(path + ".y.npy", sess.run(None, {"x": x})[0])
    out["cases"][name] = path + ".y.npy"
print(json.dumps(out))
"""


def _case(kind: str, code_bits: int, index_bits: int, rng: np.random.Generator,
          generic: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    """A model y = x @ W^T with W rebuilt by one decoder; returns it and W as NumPy computes it."""
    numel = int(np.prod(SHAPE))
    inits, count = {}, numel
    if kind == layout.DENSE:
        codes = rng.integers(0, 1 << code_bits, numel)
        codebook = rng.normal(size=1 << code_bits).astype(np.float32)
        inits = {"codebook": codebook, "codes": pack_bits(codes, code_bits)}
        weight = codebook[codes]
    else:
        kept = np.sort(rng.choice(numel, numel // 3, replace=False))
        entries = encode_positions(kept, index_bits)
        count = entries.positions.size
        weight = np.zeros(numel, np.float32)
        inits["gaps"] = pack_bits(entries.gaps, index_bits)
        if kind == layout.SPARSE:
            codebook = rng.normal(size=1 << code_bits).astype(np.float32)
            codebook[0] = 0.0
            codes = np.where(entries.real, rng.integers(1, 1 << code_bits, count), 0)
            inits.update(codebook=codebook, codes=pack_bits(codes, code_bits))
            weight[entries.positions] = codebook[codes]
        else:
            values = np.where(entries.real, rng.normal(size=count), 0.0).astype(np.float32)
            inits["values"] = values
            weight[entries.positions] = values
    node = layout.make_decoder_node("W", kind, code_bits, index_bits, count, SHAPE, Settings(), shared=True,
                                    reserves_zero=kind != layout.DENSE, generic=generic)
    assert node.op_type.endswith("_g") == generic
    opset = GENERIC_OPSET if generic else OPSET
    tensors = [nh.from_array(np.asarray(inits[role]), f"W/dc/{role}") for role in layout.INPUTS[kind]]
    graph = oh.make_graph(
        [node, oh.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "decode",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [SHAPE[1], SHAPE[1]])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [SHAPE[1], SHAPE[0]])], tensors,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid(layout.DOMAIN, 1)],
                          functions=decoders.make_functions(opset, {node.op_type}))
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model, weight.reshape(SHAPE)


def _cases() -> dict[str, tuple[str, int, int, bool]]:
    out = {}
    for bits in range(1, 17):
        for generic, tag in ((False, ""), (True, "_g")):
            out[f"dense_c{bits}{tag}"] = (layout.DENSE, bits, 0, generic)
            out[f"sparse_c{bits}_i{17 - bits}{tag}"] = (layout.SPARSE, bits, 17 - bits, generic)
            out[f"values_i{bits}{tag}"] = (layout.SPARSE_VALUES, 0, bits, generic)
    return out


def _run(python: str, tmp_path, name: str) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    job, expected = {}, {}
    for case, (kind, code_bits, index_bits, generic) in _cases().items():
        model, weight = _case(kind, code_bits, index_bits, rng, generic)
        path = tmp_path / f"{case}.onnx"
        onnx.save(model, str(path))
        job[case], expected[case] = str(path), weight
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "runner.py").write_text(RUNNER)
    proc = subprocess.run([python, str(tmp_path / "runner.py"), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), expected


def _check(outputs: dict, expected: dict) -> None:
    for case, weight in expected.items():
        y = np.load(outputs["cases"][case])
        # x is the identity, so y = W^T exactly: each output is one weight times 1.0 plus zeros.
        assert np.array_equal(y.T.view(np.uint32), weight.view(np.uint32)), case
        optimized = onnx.load(outputs["cases"][case].replace(".y.npy", ".opt.onnx"))
        ops = {n.op_type for n in optimized.graph.node}
        assert not ops & {"Gather", "ScatterElements", "BitShift", "CumSum", "Cast", "MatMul", "Slice"}, (case, ops)
        assert not any(n.domain == layout.DOMAIN for n in optimized.graph.node), case


def test_every_width_is_bit_exact_and_folded_in_onnxruntime_1_19(tmp_path):
    outputs, expected = _run(sys.executable, tmp_path, "onnxruntime 1.19")
    assert outputs["version"].startswith("1.19")
    _check(outputs, expected)


def test_every_width_is_bit_exact_and_folded_in_newest_onnxruntime(tmp_path):
    outputs, expected = _run(str(latest_python()), tmp_path, "newest onnxruntime")
    assert tuple(int(v) for v in outputs["version"].split(".")[:2]) > (1, 19)
    _check(outputs, expected)


def test_numpy_decode_matches_the_model_layout():
    rng = np.random.default_rng(1)
    for case, (kind, code_bits, index_bits, generic) in _cases().items():
        model, weight = _case(kind, code_bits, index_bits, rng, generic)
        _, decoded = layout.strip_decoders(model)
        assert np.array_equal(decoded["W"][1].weights, weight), case


@pytest.mark.parametrize("settings", [
    {"class_num": 16},  # dense form, no reserved zero
    {"sparse_ratio": 0.7, "class_num": 8},  # sparse form
    {"sparse_ratio": 0.7, "quantize_term": False},  # sparse values form
])
def test_onnx_dc_session_rebuilds_weights_as_stock_onnxruntime_folds_them(settings, tmp_path, monkeypatch):
    """onnx_dc.InferenceSession (weights rebuilt in NumPy into a temporary data file) computes what stock
    onnxruntime computes by folding the decoders, from a .dc.onnx and from a .dcz, and leaves no file behind."""
    import tempfile

    from conftest import conv_model, mlp_model

    import onnx_dc

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    opened = []
    real = tempfile.TemporaryDirectory
    monkeypatch.setattr(tempfile, "TemporaryDirectory", lambda **kw: opened.append(kw) or real(**kw))
    for make, shape in ((mlp_model, (5, 64)), (conv_model, (3, 1, 4, 4))):
        dc = tmp_path / f"{make.__name__}.dc.onnx"
        onnx_dc.compress(make(), dc, **settings)
        onnx_dc.pack(dc, tmp_path / f"{make.__name__}.dcz")
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        stock = onnx_dc.InferenceSession(dc, decode=False).run(None, {"x": x})[0]
        for source in (dc, tmp_path / f"{make.__name__}.dcz"):
            session = onnx_dc.InferenceSession(source)
            np.testing.assert_allclose(session.run(None, {"x": x})[0], stock, rtol=1e-5, atol=1e-6)
    assert len(opened) == 4  # every decode=True session went through a rebuilt data file
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary data files are gone, the sessions still run
