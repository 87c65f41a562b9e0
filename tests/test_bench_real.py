"""scripts/bench_real.py on one small real model at one target: every row has its fields, and the ratio is the
original file's bytes over the bytes of the file the row names."""

from __future__ import annotations

import json
import sys

from conftest import ROOT, shared_path

sys.path.insert(0, str(ROOT / "scripts"))
import bench_distill  # noqa: E402
import bench_real  # noqa: E402

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
    assert sized["settings"] == {"target_ratio": 4, "ratios": [0.5], "class_nums": [16], "codebooks": ["layer"]}
    assert sized["rounds"] >= 1 and sized["sweep_seconds"] > 0 and sized["note"].startswith("sweep ")
    assert sum(sized["chosen"].values()) == 22 and set(sized["chosen"]) <= {"dense", "0/16", "0.5/16", "0.5/f32"}
    assert sized["ratio"] >= 4
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

    # --sweeps: the sweep was saved, and a second run of the size target reads it instead of sweeping again
    (saved,) = sweeps.glob("*.sweep.json")
    assert json.loads(saved.read_text())["class_nums"] == [16]
    monkeypatch.setattr(sys, "argv", ["bench_real.py", "--models", "cifar10-resnet20", "--targets", "4", "--limit",
                                      "4", "--json", str(out), "--plot", "", "--methods", bench_real.SIZED,
                                      "--no-peers", "--update"] + grid)
    assert bench_real.main() == 0
    again = [r for r in json.loads(out.read_text())["rows"] if r["method"] == bench_real.SIZED]
    assert len(again) == 1 and "sweep_seconds" not in again[0]
    assert again[0]["note"].startswith(f"sweep read from {saved.name}") and again[0]["ratio"] >= 4
