"""scripts/bench_real.py on one small real model at one target: every row has its fields, and the ratio is the
original file's bytes over the bytes of the file the row names."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import onnx
from conftest import ROOT, shared_path

sys.path.insert(0, str(ROOT / "scripts"))
import bench_distill  # noqa: E402
import bench_real  # noqa: E402
from onnx_dc.data.calib import as_calib_spec, load_calib, split_indices  # noqa: E402

MODEL = bench_distill.REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"


def test_bench_real_rows_measure_the_written_files(tmp_path, monkeypatch):
    shared_path(MODEL)
    monkeypatch.setattr(bench_distill, "N_IMAGES", 12)  # photo crops written (the benchmark writes 160)
    monkeypatch.setattr(bench_distill, "N_SMALL_IMAGES", 12)  # (and 1280 of ResNet-20's size)
    out, files, sweeps = tmp_path / "bench.json", tmp_path / "files", tmp_path / "sweeps"
    grid = ["--sweep-ratios", "0.5", "--sweep-class-nums", "16", "--sweeps", str(sweeps)]
    monkeypatch.setattr(sys, "argv", ["bench_real.py", "--models", "cifar10-resnet20", "--targets", "4",
                                      "--limit", "4", "--json", str(out), "--plot", str(tmp_path / "p.png"),
                                      "--keep", str(files)] + grid)
    assert bench_real.main() == 0

    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["target"]) for r in rows] == (
        [(m, "~4x") for m in bench_real.METHODS] + [(bench_real.SIZED, ">=4x")]
        + [(p, "peer") for p in bench_real.PEERS])
    sized = rows[len(bench_real.METHODS)]  # the size target: the settings it swept, what it chose, >= 4x
    assert sized["settings"] == {"target_ratio": 4, "ratios": [0.5], "class_nums": [16], "codebooks": ["layer"],
                                 "estimated": True}
    assert sized["rounds"] >= 1 and sized["sweep_seconds"] > 0 and sized["note"].startswith("sweep ")
    assert "(estimated: the model run at 2 settings per layer)" in sized["note"]  # as compress --calib does
    assert sum(sized["chosen"].values()) == 22 and set(sized["chosen"]) <= {"dense", "0/16", "0.5/16", "0.5/f32"}
    assert sized["ratio"] >= 4
    # judged on the 6 crops of 12 that are neither the 4 calibration nor the 2 held-out ones (selection_spec)
    assert sized["judged"] == "judged on 6 samples neither calibration nor held out"
    original = MODEL.stat().st_size
    for r in rows:
        assert r["model"] == "cifar10-resnet20" and r["original_bytes"] == original and r["seconds"] >= 0
        if r["target"] == "peer" and "bytes" not in r:
            assert r["error"].startswith("quantize: ")  # a peer that fails says where and why
            continue
        written = files / r["file"]
        assert r["bytes"] == written.stat().st_size
        assert r["ratio"] == original / r["bytes"]
        if "error" not in r:
            assert r["worst_cosine"] == min(o["cosine"] for o in r["outputs"])
            assert r["task"]["metric"] == "top-1 agreement" and 0 <= r["task"]["value"] <= 1
    for r in rows[: len(bench_real.METHODS) + 1]:  # onnx_dc's rows measure the packed .dcz
        assert "error" not in r and r["file"].endswith(".dcz")
    assert (tmp_path / "p.png").stat().st_size > 0

    # --sweeps: the sweep was saved, and a second run of the size target reads it instead of sweeping again; the
    # samples it is judged by are written once per model, not once per target
    (saved,) = sweeps.glob("*.sweep.json")
    assert json.loads(saved.read_text())["class_nums"] == [16]
    selections = []
    monkeypatch.setattr(bench_real, "selection_spec",
                        lambda *a, f=bench_real.selection_spec: selections.append(a) or f(*a))
    sized_only = ["--models", "cifar10-resnet20", "--limit", "4", "--json", str(out), "--plot", "", "--methods",
                  bench_real.SIZED, "--no-peers", "--update"] + grid
    monkeypatch.setattr(sys, "argv", ["bench_real.py", "--targets", "4,8"] + sized_only)
    assert bench_real.main() == 0
    again = [r for r in json.loads(out.read_text())["rows"] if r["method"] == bench_real.SIZED]
    assert [r["target"] for r in again] == [">=4x", ">=8x"] and len(selections) == 1
    assert "sweep_seconds" not in again[0] and again[1]["ratio"] >= 8
    assert again[0]["note"].startswith(f"sweep read from {saved.name}") and again[0]["ratio"] >= 4
    # --no-sweep-estimate: every point measured, a sweep of its own (saved beside the other)
    monkeypatch.setattr(sys, "argv", ["bench_real.py", "--targets", "4", "--no-sweep-estimate"] + sized_only)
    assert bench_real.main() == 0
    (full,) = [r for r in json.loads(out.read_text())["rows"]
               if r["method"] == bench_real.SIZED and r["target"] == ">=4x"]
    assert not full["settings"]["estimated"] and "estimated" not in full["note"] and full["sweep_seconds"] > 0
    assert sorted(p.name for p in sweeps.glob("*.sweep.json")) == sorted([saved.name, saved.name.replace("-est", "")])


def test_size_target_judges_on_samples_neither_calibration_nor_held_out(tmp_path, monkeypatch):
    """selection_spec: the samples the size target's sweep and rounds are judged by share none with the
    calibration samples or with the held-out samples the rows are measured on (images and npz pools)."""
    shared_path(MODEL)
    monkeypatch.setattr(bench_distill, "N_SMALL_IMAGES", 12)
    spec = bench_distill.cases(tmp_path, 1, 4)["cifar10-resnet20"]()["spec"]
    model = onnx.load(str(MODEL))
    select = bench_real.selection_spec(spec, tmp_path / "select")
    assert (select.limit, select.holdout_limit) == (6, 0)  # 12 crops: 2 held out (every fifth), 4 calibration
    data, judged = load_calib(spec, model), load_calib(select, model)
    assert len(judged.calib) == 6 and len(judged.heldout) == 0

    def rows(samples):
        return {samples.feed(i)[next(iter(samples.feed(i)))].tobytes() for i in range(len(samples))}

    seen = rows(data.calib) | rows(data.heldout)
    assert len(seen) == 6 and not rows(judged.calib) & seen

    sentences = shared_path(bench_distill.REAL / "minilm" / "sentences.npz")
    text = replace(as_calib_spec(f"npz:{sentences}"), limit=64)
    select = bench_real.selection_spec(text, tmp_path / "select-text")
    with np.load(sentences) as z:
        every = list(z["text"])
    with np.load(select.path) as z:
        picked = set(z["text"])
    calib, held = split_indices(len(every), text)
    assert len(picked) == select.limit == len(every) - len(calib) - len(held) > 0
    assert not picked & {every[i] for i in np.concatenate([calib, held])}
    # a pool with nothing left over (every sample calibration or held out): None, the caller judges on held-out
    assert bench_real.selection_spec(replace(text, limit=len(every)), tmp_path / "none") is None
