"""The onnx-dc command line: happy paths and every kind of bad input (one line, exit code 2)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MNIST_DIR, fp16_model
from onnx import helper as oh

from onnx_dc.cli import main
from onnx_dc.graph.io import write_model


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expect_user_error(capsys, *argv, contains):
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("onnx-dc: error: ") and err.count("\n") == 1, err
    assert contains in err, err
    return err


def test_compress_report_json_and_baseline(capsys, mlp_path, tmp_path):
    out = tmp_path / "mlp.dc.onnx"
    code, text, _ = cli(capsys, "compress", mlp_path, "-o", out, "--sparse-ratio", "0.9", "--class-num", "16")
    assert code == 0 and "fc0" in text and f"wrote {out}" in text
    code, text, _ = cli(capsys, "report", out, "--baseline", mlp_path, "--json")
    rep = json.loads(text)
    assert code == 0 and [r["nodes"] for r in rep["layers"]] == ["fc0", "fc1"]
    assert rep["totals"]["source_file_bytes"] == mlp_path.stat().st_size
    assert rep["totals"]["file_bytes"] == out.stat().st_size
    for key in ("shape", "weights", "kept_pct", "class_num", "code_bits", "index_bits", "codes_bytes",
                "index_bytes", "codebook_bytes", "ratio"):
        assert key in rep["layers"][0]
    assert rep["skipped"][0]["reason"].startswith("bias")


def test_compress_with_config_file(capsys, mlp_path, tmp_path):
    cfg = tmp_path / "dc.yaml"
    cfg.write_text("defaults: {class_num: 8}\nnodes:\n  - match: fc1\n    skip: true\n")
    code, text, _ = cli(capsys, "compress", mlp_path, "-o", tmp_path / "o.dc.onnx", "--config", cfg, "--json")
    rep = json.loads(text)
    assert code == 0 and [r["nodes"] for r in rep["layers"]] == ["fc0"] and rep["layers"][0]["class_num"] == 8
    assert any("skip: true" in s["reason"] for s in rep["skipped"])


def direct_correct(model_path, n: int, scale: float = 1 / 255) -> int:
    """Correct answers of a 1x1x28x28-input model on the first n MNIST test images, in plain onnxruntime."""
    from onnx_dc.data.datasets import load_dataset

    test = load_dataset(f"mnist:{MNIST_DIR}")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = (test.images[:n].astype(np.float32) * np.float32(scale)).transpose(0, 3, 1, 2)
    return sum(int(session.run(None, {name: x[i : i + 1]})[0].argmax() == test.labels[i]) for i in range(n))


def test_eval_json_and_stored_preprocessing(capsys, mnist8, mnist_dir, tmp_path):
    code, text, _ = cli(capsys, "eval", mnist8, "--data", f"mnist:{MNIST_DIR}", "--json", "--limit", "500")
    res = json.loads(text)
    assert code == 0 and res["n"] == 500 and res["correct"] == direct_correct(mnist8, 500)
    out = tmp_path / "m.dc.onnx"
    cli(capsys, "compress", mnist8, "-o", out, "--class-num", "16", "--scale", "0.5")
    code, text, _ = cli(capsys, "eval", out, "--data", f"mnist:{MNIST_DIR}", "--json", "--limit", "10")
    assert json.loads(text)["preprocess"]["scale"] == 0.5  # recorded at compress time, reused


def test_not_onnx_truncated_and_missing(capsys, tmp_path, mnist8):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    expect_user_error(capsys, "compress", junk, "-o", tmp_path / "o.onnx", contains="junk.onnx: not an ONNX model")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mnist8.read_bytes()[:15000])
    expect_user_error(capsys, "compress", cut, "-o", tmp_path / "o.onnx", contains="cut.onnx")
    expect_user_error(capsys, "compress", tmp_path / "none.onnx", "-o", tmp_path / "o.onnx", contains="no such file")
    expect_user_error(capsys, "report", tmp_path / "none.onnx", contains="no such file")
    assert not (tmp_path / "o.onnx").exists()


def test_no_compressible_weights(capsys, tmp_path):
    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [oh.make_tensor_value_info("x", 1, ["N", 2])],
                      [oh.make_tensor_value_info("y", 1, ["N", 2])])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 10
    write_model(m, tmp_path / "relu.onnx")
    expect_user_error(capsys, "compress", tmp_path / "relu.onnx", "-o", tmp_path / "o.onnx",
                      contains="no compressible weights")


@pytest.mark.parametrize("flags,contains", [
    (["--sparse-ratio", "1.0"], "sparse_ratio: 1.0 must be a number in [0, 1)"),
    (["--sparse-ratio", "-0.2"], "sparse_ratio"),
    (["--class-num", "300"], "class_num: 300 must be an integer in 2..256"),
    (["--class-num", "1"], "class_num: 1 "),
    (["--index-bits", "20"], "index_bits"),
])
def test_bad_settings(capsys, mlp_path, tmp_path, flags, contains):
    expect_user_error(capsys, "compress", mlp_path, "-o", tmp_path / "o.onnx", *flags, contains=contains)


def test_bad_configs_report_everything(capsys, mlp_path, tmp_path):
    cfg = tmp_path / "dc.yaml"
    cfg.write_text("defaults: {sparse_ratio: 2, colour: red}\nnodes:\n  - match: conv7\n    class_num: 8\nplan: 1\n")
    err = expect_user_error(capsys, "compress", mlp_path, "-o", tmp_path / "o.onnx", "--config", cfg,
                            contains="unknown setting 'colour'")
    assert "unknown key 'plan'" in err and "sparse_ratio: 2" in err
    cfg.write_text("nodes:\n  - match: conv7\n    class_num: 8\n")
    expect_user_error(capsys, "compress", mlp_path, "-o", tmp_path / "o.onnx", "--config", cfg,
                      contains="'conv7' matches no compressible node")


def test_fp16_weights_are_reported_as_skipped(capsys, tmp_path):
    write_model(fp16_model(), tmp_path / "h.onnx")
    code, text, _ = cli(capsys, "compress", tmp_path / "h.onnx", "-o", tmp_path / "h.dc.onnx", "--class-num", "4")
    assert code == 0 and "not compressed: half_fc (MatMul) wh: float16 weight is not compressed" in text


def test_input_never_modified_and_not_overwritten(capsys, mlp_path):
    digest = hashlib.sha256(mlp_path.read_bytes()).hexdigest()
    expect_user_error(capsys, "compress", mlp_path, "-o", mlp_path, "--class-num", "4", contains="refusing to overwrite")
    assert hashlib.sha256(mlp_path.read_bytes()).hexdigest() == digest


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "onnx_dc", "compress", str(junk), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "junk.onnx" in proc.stderr


def test_compressed_file_loads_in_plain_onnxruntime(capsys, mlp_path, tmp_path):
    out = tmp_path / "m.dc.onnx"
    cli(capsys, "compress", mlp_path, "-o", out, "--sparse-ratio", "0.5")
    proc = subprocess.run([sys.executable, "-c", f"import onnxruntime as ort; ort.InferenceSession({str(out)!r})"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_report_on_an_uncompressed_model_and_eval_on_mismatched_data(capsys, mlp_path, tmp_path):
    expect_user_error(capsys, "report", mlp_path, contains="not a compressed model")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.int64))
    err = expect_user_error(capsys, "eval", mlp_path, "--data", f"npz:{tmp_path / 'd.npz'}", contains="does not fit")
    assert "mlp.onnx" in err


def test_eval_of_a_truncated_model_is_one_line_exit_2(capsys, tmp_path):
    import onnx_dc
    from conftest import ROOT

    cut, text = tmp_path / "cut.onnx", tmp_path / "notes.onnx"
    cut.write_bytes((ROOT / "models" / "lenet5.onnx").read_bytes()[:300])
    text.write_text("hello world\n")
    for bad in (cut, text):
        before = bad.read_bytes()
        expect_user_error(capsys, "eval", bad, "--data", "digits",
                          contains=f"{bad}: not an ONNX model, or the file is truncated (protobuf cannot parse it)")
        assert bad.read_bytes() == before
    with pytest.raises(onnx_dc.ModelError, match="cut.onnx: not an ONNX model"):
        onnx_dc.evaluate(cut, "digits")


def test_scale_zero_or_negative_is_refused_before_any_work(capsys, mlp_path, tmp_path):
    out = tmp_path / "o.dc.onnx"
    for value in ("0", "-1"):
        for command in (["eval", mlp_path, "--data", "digits"],
                        ["compress", mlp_path, "-o", out, "--data", "digits"],
                        ["compress", mlp_path, "-o", out, "--calib", "digits"],
                        ["sensitivity", mlp_path, "--data", "digits", "--json", tmp_path / "s.json"]):
            expect_user_error(capsys, *command, "--scale", value,
                              contains=f"--scale {value}: give a positive pixel multiplier")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]
    code, text, _ = cli(capsys, "eval", mlp_path, "--data", "digits", "--scale", "0.0625")
    assert code == 0 and "x * 0.0625" in text


def test_prune_quality_that_prunes_a_whole_layer_is_refused_naming_it(capsys, mlp_path, tmp_path):
    import re

    out = tmp_path / "o.dc.onnx"
    err = expect_user_error(capsys, "compress", mlp_path, "-o", out, "--prune-quality", "100",
                            contains="prune_quality prunes every weight of fc0 [w0] (100, bound ")
    bounds = {node: float(b) for node, b in re.findall(r"(fc\d) \[w\d\] \(100, bound ([\d.]+)\)", err)}
    assert set(bounds) == {"fc0", "fc1"} and "give a smaller value (--prune-quality" in err
    assert not out.exists()
    low, high = sorted(bounds.values())
    name_low = min(bounds, key=bounds.get)
    err = expect_user_error(capsys, "compress", mlp_path, "-o", out, "--prune-quality", f"{low * 1.01:.6g}",
                            contains=f"every weight of {name_low} [w{name_low[-1]}] (")
    assert max(bounds, key=bounds.get) not in err  # the other layer keeps weights there
    code, text, _ = cli(capsys, "compress", mlp_path, "-o", out, "--prune-quality", f"{low * 0.99:.6g}", "--json")
    kept = {row["nodes"]: row["kept_pct"] for row in json.loads(text)["layers"]}
    assert code == 0 and 0 < kept[name_low] < 1 and kept[max(bounds, key=bounds.get)] > 0


def test_finetune_with_zero_epochs_is_refused(capsys, mlp_path, tmp_path):
    import onnx_dc

    dc, out = tmp_path / "m.dc.onnx", tmp_path / "tuned.dc.onnx"
    onnx_dc.compress(mlp_path, dc, class_num=8)
    for epochs in ("0", "-2"):
        expect_user_error(capsys, "finetune", dc, "-o", out, "--data", "digits", "--epochs", epochs,
                          contains=f"--epochs {epochs}: finetune trains, epochs must be >= 1")
    assert not out.exists()
