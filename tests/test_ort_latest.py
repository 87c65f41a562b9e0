"""Compressed models run in the newest onnxruntime from PyPI too (a second virtual environment).

``scripts/setup_env.sh --test`` (the README's test command, and so CI) creates
``.venv-ort-latest`` with the newest ``onnxruntime``; set ``ONNX_DC_ORT_LATEST_PYTHON``
to use another interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from conftest import ROOT, conv_model, missing, mlp_model, run, shared_weight_model

import onnx_dc
from onnx_dc.graph.io import write_model

LATEST_PY = Path(os.environ.get("ONNX_DC_ORT_LATEST_PYTHON", ROOT / ".venv-ort-latest" / "bin" / "python"))


def latest_python() -> Path:
    """The newest onnxruntime's Python; without it, fail in CI and skip elsewhere (conftest.missing)."""
    if not LATEST_PY.is_file():
        missing(".venv-ort-latest", f"no {LATEST_PY}: run `bash scripts/setup_env.sh --test`")
    return LATEST_PY

RUNNER = """
import json, sys, numpy as np, onnxruntime as ort
job = json.load(open(sys.argv[1]))
via = sys.argv[2] if len(sys.argv) > 2 else "ort"
out = {"version": ort.__version__}
for name, (path, feeds) in job.items():
    if via == "onnx_dc":  # weights rebuilt by onnx_dc into a temporary data file
        import onnx_dc
        sess = onnx_dc.InferenceSession(path)
    else:  # stock onnxruntime folds the decoder functions
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.load(feeds)
    out[name] = path + ".out.npy"
    np.save(out[name], sess.run(None, {sess.get_inputs()[0].name: x["x"]})[0])
print(json.dumps(out))
"""


def test_compressed_models_run_in_newest_onnxruntime(tmp_path, mnist8):
    latest = latest_python()
    rng = np.random.default_rng(0)
    cases = {
        "mlp": (mlp_model(), {"sparse_ratio": 0.9, "class_num": 16}, rng.normal(size=(5, 64))),
        "conv": (conv_model(), {"sparse_ratio": 0.5, "class_num": 8}, rng.normal(size=(2, 1, 4, 4))),
        "tied": (shared_weight_model(), {"class_num": 4}, rng.normal(size=(3, 32))),
        "values": (mlp_model(1), {"sparse_ratio": 0.95, "quantize_term": False}, rng.normal(size=(2, 64))),
        "mnist8": (str(mnist8), {"sparse_ratio": 0.5, "class_num": 32}, rng.random((1, 1, 28, 28))),
    }
    job, expected = {}, {}
    for name, (model, settings, x) in cases.items():
        result = onnx_dc.compress(model, **settings)
        path = tmp_path / f"{name}.dc.onnx"
        write_model(result.model, path)
        x = x.astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x)
        job[name] = (str(path), str(tmp_path / f"{name}.npz"))
        feed_name = result.model.graph.input[0].name
        expected[name] = run(result.state.dense_model(), {feed_name: x})[0]
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "runner.py").write_text(RUNNER)
    for via in ("ort", "onnx_dc"):
        proc = subprocess.run([str(latest), str(tmp_path / "runner.py"), str(tmp_path / "job.json"), via],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        outputs = json.loads(proc.stdout.strip().splitlines()[-1])
        assert tuple(int(v) for v in outputs["version"].split(".")[:2]) > (1, 19)
        for name in cases:
            np.testing.assert_allclose(np.load(outputs[name]), expected[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} via {via}")
