"""Everyday use of the command line (issue 10): each numbered item of the issue has a test named after it.

Every command runs for real (onnxruntime, the models in models/ and ../shared/data);
where a test must show that a check came *before* the work, the API function that would
do the work is replaced by one that fails the test if it is called.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, SHARED_DATA, mlp_model, needs_training, shared_path

import onnx_dc
from onnx_dc.cli import build_parser, main
from onnx_dc.data.datasets import METADATA_KEY, Preprocess, load_dataset
from onnx_dc.errors import DataError
from onnx_dc.graph.io import write_model
from onnx_dc.train.ort_training import training_available

MODELS = ROOT / "models"
LENET5 = MODELS / "lenet5.onnx"
CAFFE = SHARED_DATA / "caffe"
EMBEDDED = CAFFE / "lenet_iter_10000.embedded_net.prototxt"
CAFFEMODEL = CAFFE / "lenet_iter_10000.caffemodel"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv) -> str:
    """Run a command that must fail on its input: exit 2, one line on stderr; returns that line."""
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("onnx-dc: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Make the API's working functions fail the test when called: a check must stop the command first."""
    def called(*args, **kwargs):
        pytest.fail("the command started its work before checking its arguments")

    for name in ("compress", "finetune", "evaluate", "import_caffe", "pack", "unpack", "report"):
        monkeypatch.setattr(onnx_dc, name, called)


def subcommands() -> dict:
    """The onnx-dc subcommands' parsers, by name."""
    return next(a.choices for a in build_parser()._actions if a.dest == "command")


def metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


# ----------------------------------------------------------------------------- 1. silent scale change

def test_item1_a_preprocessing_flag_keeps_the_natural_scale(capsys, mnist8, mnist_dir, tmp_path):
    data = f"mnist:{mnist_dir}"
    runs = [json.loads(cli(capsys, "eval", mnist8, "--data", data, "--limit", "1000", "--json", *flags)[1])
            for flags in ([], ["--layout", "nchw"], ["--mean", "0"])]
    assert {r["preprocess"]["scale"] for r in runs} == {1 / 255}
    assert runs[0]["correct"] == runs[1]["correct"] == runs[2]["correct"]
    out = tmp_path / "l.dc.onnx"  # a model with stored preprocessing keeps its scale under another flag
    assert cli(capsys, "compress", LENET5, "-o", out, "--class-num", "16", "--layout", "nchw")[0] == 0
    assert Preprocess.from_metadata(metadata(out)[METADATA_KEY]).scale == pytest.approx(1 / 255)


@needs_training
def test_item1_c_compress_stores_the_data_scale_with_a_flag(capsys, mlp_path, tmp_path):
    out = tmp_path / "m.dc.onnx"  # mlp_path stores no preprocessing; digits' pixels are 0..16
    assert cli(capsys, "compress", mlp_path, "-o", out, "--class-num", "16", "--mean", "0", "--data", "digits",
               "--epochs", "0")[0] == 0
    assert Preprocess.from_metadata(metadata(out)[METADATA_KEY]) == Preprocess(scale=1 / 16)


def test_item1_b_a_flag_without_a_known_scale_is_refused(capsys, mnist8, tmp_path, no_work):
    err = user_error(capsys, "compress", mnist8, "-o", tmp_path / "m.dc.onnx", "--layout", "nchw")
    assert "--layout without --scale" in err and "add --scale" in err


# ----------------------------------------------------------------------------- 2. NCHW npz

def test_item2_channels_first_npz_is_read_as_such_and_shapes_are_checked(capsys, mnist_dir, tmp_path):
    test = load_dataset(f"mnist:{mnist_dir}")
    np.savez(tmp_path / "nchw.npz", x=test.images[:1000].transpose(0, 3, 1, 2), y=test.labels[:1000])
    np.savez(tmp_path / "nhwc.npz", x=test.images[:1000], y=test.labels[:1000])
    accs = [json.loads(cli(capsys, "eval", LENET5, "--data", spec, "--limit", "1000", "--json")[1])["correct"]
            for spec in (f"npz:{tmp_path / 'nchw.npz'}", f"npz:{tmp_path / 'nhwc.npz'}", f"mnist:{mnist_dir}")]
    assert accs[0] == accs[1] == accs[2] > 900
    err = user_error(capsys, "eval", LENET5, "--data", f"npz:{tmp_path / 'nchw.npz'}", "--layout", "nhwc")
    assert "(28, 28, 1) (nhwc) does not fit the model input (1, 28, 28)" in err
    with pytest.raises(DataError, match="does not fit"):  # same element count, wrong shape
        Preprocess(layout="nhwc").apply(np.zeros((2, 28, 28, 1), np.uint8), (1, 28, 28))


# ----------------------------------------------------------------------------- 3. checks before work

def test_item3_output_paths_data_and_configs_are_checked_before_any_work(capsys, tmp_path, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_model(mlp_model(), tmp_path / "mlp.onnx")
    (tmp_path / "adir").mkdir()
    base = ["compress", "mlp.onnx", "--data", "digits", "--epochs", "1"]
    assert "folder nofolder does not exist; create it first" in user_error(capsys, *base, "-o", "nofolder/x.dc.onnx")
    assert "-o adir: is a folder; give a file name" in user_error(capsys, *base, "-o", "adir")
    assert "--data: mnist:nope: nope is not a folder" in user_error(
        capsys, "compress", "mlp.onnx", "-o", "x.dc.onnx", "--data", "mnist:nope")
    assert "npz:adir: a folder, not a file" in user_error(capsys, "eval", "mlp.onnx", "--data", "npz:adir")
    assert "nofile.yaml: no such file (--config)" in user_error(capsys, *base, "-o", "x.dc.onnx", "--config",
                                                                 "nofile.yaml")
    (tmp_path / "bad.yaml").write_text("defaults: {colour: red}\n")
    assert "unknown setting 'colour'" in user_error(capsys, *base, "-o", "x.dc.onnx", "--config", "bad.yaml")
    assert "--batch-size 0: give a positive integer" in user_error(capsys, *base, "-o", "x.dc.onnx",
                                                                    "--batch-size", "0")
    assert "--config-out nofolder/c.yaml: folder nofolder does not exist" in user_error(
        capsys, "import-caffe", "mlp.onnx", "mlp.onnx", "-o", "c.onnx", "--config-out", "nofolder/c.yaml")
    assert "refusing to overwrite the input" in user_error(capsys, "pack", "mlp.onnx", "-o", "mlp.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "bad.yaml", "mlp.onnx"]  # nothing written


def test_item3_import_caffe_api_checks_both_outputs_before_writing(tmp_path):
    with pytest.raises(onnx_dc.OnnxDcError, match="config_out .*folder .* does not exist"):
        onnx_dc.import_caffe(tmp_path / "a.prototxt", tmp_path / "b.caffemodel", tmp_path / "m.onnx",
                             tmp_path / "none" / "c.yaml")
    assert not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------- 4. --config not YAML

def test_item4_config_that_is_not_yaml_text_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnx_dc", "compress", str(LENET5), "-o", str(tmp_path / "x.onnx"),
                           "--config", str(LENET5)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == (f"onnx-dc: error: {LENET5}: not a YAML text file (binary data, e.g. a model); "
                           "give the .yaml config (docs/CONFIG.md)\n")


# ----------------------------------------------------------------------------- 5. input shapes

def test_item5_input_shape_messages_name_the_flag(capsys, tmp_path, mlp_path):
    shared_path(CAFFEMODEL)
    args = ["import-caffe", EMBEDDED, CAFFEMODEL, "-o", tmp_path / "c.onnx"]
    assert "--input-shape 1,28,28 (input_shape=(1, 28, 28) in Python)" in user_error(capsys, *args)
    assert "--input-shape '28x28': give positive integers separated by commas, like 1,28,28" in user_error(
        capsys, *args, "--input-shape", "28x28")
    err = user_error(capsys, *args, "--input-shape", "28,28")
    assert "the input gives it 3 dimensions" in err and "it lists channels, height and width" in err
    assert "--input-shape applies only with --caffe" in user_error(
        capsys, "compress", mlp_path, "-o", tmp_path / "x.dc.onnx", "--input-shape", "1,28,28")
    assert cli(capsys, *args, "--input-shape", "1,28,28")[0] == 0


# ----------------------------------------------------------------------------- 6. messages

def test_item6_careless_inputs_get_a_precise_message(capsys, tmp_path, mlp_path, mnist_dir):
    (tmp_path / "adir").mkdir()
    dc, dcz = tmp_path / "m.dc.onnx", tmp_path / "m.dcz"
    assert "adir: is a folder, not a file" in user_error(capsys, "compress", tmp_path / "adir", "-o", dc)
    onnx_dc.compress(mlp_path, dc, class_num=8)
    onnx_dc.pack(dc, dcz)
    assert f"a packed .dcz (already compressed); compress the original .onnx, or restore the .dc.onnx first: " \
           f"onnx-dc unpack {dcz} -o m.dc.onnx" in user_error(capsys, "compress", dcz, "-o", tmp_path / "y.dc.onnx")
    err = user_error(capsys, "pack", mlp_path, "-o", tmp_path / "plain.dcz")
    assert "not a compressed model (no onnx_dc decoders); run onnx-dc compress on it first" in err
    assert not (tmp_path / "plain.dcz").exists()
    for limit in ("-5", "0"):
        assert f"--limit {limit}: give a positive integer" in user_error(
            capsys, "eval", mlp_path, "--data", "digits", "--limit", limit)
    assert "--epochs -1: give an integer >= 0" in user_error(
        capsys, "compress", mlp_path, "-o", tmp_path / "z.dc.onnx", "--data", "digits", "--epochs", "-1")
    other = tmp_path / "other.onnx"
    write_model(mlp_model(sizes=(64, 32, 10)), other)
    err = user_error(capsys, "report", dc, "--baseline", other)
    assert "not the model" in err and "'w0', 48x64: the baseline has 32x64" in err
    assert cli(capsys, "report", dc, "--baseline", mlp_path)[0] == 0


# ----------------------------------------------------------------------------- 7. --caffe and settings flags

def test_item7_compress_caffe_applies_settings_flags_to_plain_layers(capsys, tmp_path):
    shared_path(CAFFEMODEL)
    out = tmp_path / "lenet.dc.onnx"
    base = ["compress", "--caffe", EMBEDDED, CAFFEMODEL, "--input-shape", "1,28,28", "-o", out]
    err = user_error(capsys, *base)
    assert "nothing to compress, every weight is skipped" in err and "--sparse-ratio / --class-num" in err
    code, text, _ = cli(capsys, *base, "--sparse-ratio", "0.9", "--class-num", "16", "--json")
    rep = json.loads(text)
    assert code == 0 and [r["nodes"] for r in rep["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(r["class_num"] == 16 and abs(r["kept_pct"] - 10.0) < 0.1 for r in rep["layers"])
    assert out.stat().st_size < CAFFEMODEL.stat().st_size / 10


# ----------------------------------------------------------------------------- 8. skipped tensors grouped

def test_item8_not_compressed_lines_grouped_by_reason(capsys, tmp_path):
    src = tmp_path / "deep.onnx"
    write_model(mlp_model(sizes=(64, 32, 32, 32, 32, 10)), src)
    code, text, _ = cli(capsys, "compress", src, "-o", tmp_path / "d.dc.onnx", "--class-num", "8")
    lines = [ln for ln in text.splitlines() if ln.startswith("not compressed")]
    assert code == 0 and lines == ["not compressed: 5 tensors, bias (biases stay float32): b0, b1, b2, ..."]
    assert "(--verbose lists every tensor)" in text
    code, text, _ = cli(capsys, "compress", src, "-o", tmp_path / "d.dc.onnx", "--class-num", "8", "--verbose")
    lines = [ln for ln in text.splitlines() if ln.startswith("not compressed")]
    assert lines == [f"not compressed: fc{i} (Gemm) b{i}: bias (biases stay float32)" for i in range(5)]


# ----------------------------------------------------------------------------- 9. progress

def on_terminal(*argv, cols: int = 120) -> tuple[int, str, str]:
    """Run onnx-dc with stderr on a pseudo-terminal (stdout piped); returns code, stdout, terminal output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "onnx_dc", *map(str, argv)], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read().decode()
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@needs_training
def test_item9_progress_bars_on_a_terminal_only_and_quiet(tmp_path, mlp_path):
    dc, dcz = tmp_path / "m.dc.onnx", tmp_path / "m.dcz"
    args = ["compress", mlp_path, "-o", dc, "--class-num", "8", "--sparse-ratio", "0.5", "--data", "digits",
            "--epochs", "2"]
    code, out, term = on_terminal(*args)
    assert code == 0 and "wrote" in out
    assert re.search(r"retrain 1: +\d+%\|.*\| \d+/\d+ \[\d\d:\d\d<\d\d:\d\d, .*loss=\d", term), term[-2000:]
    assert re.search(r"codebook: +\d+%\|", term)
    epochs = re.findall(r"epoch (\d)/2 loss \S+ lr (\S+) -> (\S+)", term)
    assert len(epochs) == 4 and all(float(first) > 0 for _, first, _ in epochs)  # not "lr 0"
    assert float(epochs[0][1]) > float(epochs[0][2]) > float(epochs[1][2])  # the cosine schedule, per epoch
    code, out, term = on_terminal("pack", dc, "-o", dcz)
    assert code == 0 and re.search(r"pack: +\d+%\|", term)
    code, out, term = on_terminal("eval", dcz, "--data", "digits")
    assert code == 0 and re.search(r"eval: +\d+%\|", term) and "top-1 accuracy" in out
    piped = subprocess.run([sys.executable, "-m", "onnx_dc", *map(str, args)], capture_output=True, text=True)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "%|" not in piped.stderr
    assert "retrain 1: epoch 1/2 loss" in piped.stderr  # the epoch lines stay, without bars
    code, out, term = on_terminal(*args, "--quiet")
    assert code == 0 and out == "" and term == ""
    code, out, term = on_terminal("eval", dcz, "--data", "nowhere", "--quiet")
    assert code == 2 and term.strip() == ("onnx-dc: error: --data: unknown data spec 'nowhere': use mnist[:DIR], "
                                          "fashion-mnist[:DIR], npz:FILE or digits")


# ----------------------------------------------------------------------------- 10. --version, --json, help

def test_item10_version_json_and_finetune_help(capsys, tmp_path, mlp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"onnx-dc {version('onnx_dc')}\n"
    dc, dcz, back = tmp_path / "m.dc.onnx", tmp_path / "m.dcz", tmp_path / "back.dc.onnx"
    onnx_dc.compress(mlp_path, dc, class_num=8)
    packed = json.loads(cli(capsys, "pack", dc, "-o", dcz, "--json")[1])
    assert packed == {"output": str(dcz), "bytes": dcz.stat().st_size, "input": str(dc),
                      "input_bytes": dc.stat().st_size, "codec": "auto"}
    unpacked = json.loads(cli(capsys, "unpack", dcz, "-o", back, "--json")[1])
    assert unpacked["bytes"] == back.stat().st_size == dc.stat().st_size
    help_text = subcommands()["finetune"].format_help()
    assert "config" not in help_text


def test_item10_import_caffe_json(capsys, tmp_path):
    shared_path(CAFFEMODEL)
    code, text, _ = cli(capsys, "import-caffe", EMBEDDED, CAFFEMODEL, "-o", tmp_path / "c.onnx", "--config-out",
                        tmp_path / "c.yaml", "--input-shape", "1,28,28", "--json")
    res = json.loads(text)
    assert code == 0 and res["inputs"] == {"data": ["N", 1, 28, 28]} and res["config_out"] == str(tmp_path / "c.yaml")
    assert res["bytes"] == (tmp_path / "c.onnx").stat().st_size
    assert [n["match"] for n in res["config_nodes"]] == ["conv1", "conv2", "fc1", "fc2"]


# ----------------------------------------------------------------------------- 11. README

def test_item11_readme_has_a_section_with_output_per_command():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)
    assert blocks[0] == "bash scripts/setup_env.sh && .venv/bin/onnx-dc demo\n"
    assert blocks[1] == "bash scripts/setup_env.sh --test && .venv/bin/python -m pytest -q\n"
    for name in subcommands():
        section = re.search(rf"^### `onnx-dc {re.escape(name)}`\n(.*?)(?=^##)", text, re.S | re.M)
        assert section, f"README has no section for onnx-dc {name}"
        body = section.group(1)
        assert f"$ onnx-dc {name}" in body or f"$ .venv/bin/onnx-dc {name}" in body, name  # a real command line...
        assert re.search(r"\$ [^\n]+\n(?!\$)[^\n]+", body), name  # ...followed by its output


# ----------------------------------------------------------------------------- 12. tests that can fail

def test_item12_missing_shared_data_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    missing = tmp_path / "not-there"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI runs with ../shared/data, but .*not-there is not present"):
        shared_path(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not-there is not present"):
        shared_path(missing)
    assert shared_path(tmp_path) == tmp_path


def test_item12_demo_fine_tunes_and_prints_accuracies_that_hold(capsys, tmp_path):
    code, text, _ = cli(capsys, "demo", "--out", tmp_path)
    assert code == 0
    assert ("; no fine-tuning (" in text) != training_available()  # fine-tuning ran exactly where it can
    printed = {Path(p).name: float(a) for p, a in re.findall(r"^  (\S+) +\d+ B  accuracy (\d\.\d+)", text, re.M)}
    assert set(printed) == {"digits_mlp.onnx", "digits_mlp.dc.onnx", "digits_mlp.dcz"}
    for name, acc in printed.items():  # what it prints is what the files score
        assert acc == pytest.approx(onnx_dc.evaluate(tmp_path / name, "digits").accuracy, abs=5e-5), name
    assert printed["digits_mlp.dc.onnx"] == printed["digits_mlp.dcz"]
    untrained = float(re.search(r"no fine-tuning\) +accuracy (\d\.\d+)", text).group(1))
    if training_available():
        assert printed["digits_mlp.dc.onnx"] > untrained  # fine-tuning recovers accuracy
    warned = "warning: the compressed model is" in text
    assert warned == (printed["digits_mlp.onnx"] - printed["digits_mlp.dc.onnx"] > 0.01)


def test_demo_quiet_prints_nothing_and_still_writes_its_models(capsys, tmp_path):
    code, text, err = cli(capsys, "demo", "--out", tmp_path, "-q")
    assert code == 0 and text == "" and err == ""
    for name in ("digits_mlp.onnx", "digits_mlp.dc.onnx", "digits_mlp.dcz"):
        assert onnx_dc.evaluate(tmp_path / name, "digits").accuracy > 0.5, name


def test_ci_guard_fails_where_data_or_training_is_missing(monkeypatch, tmp_path):
    from calib_images import require
    from conftest import require_training
    from onnx_dc.train import ort_training

    missing = tmp_path / "not-there"
    monkeypatch.setattr(ort_training, "training_available", lambda: False)  # as without onnxruntime-training
    for ci in ("true", "1", "TRUE", " True "):  # one rule for every guard
        monkeypatch.setenv("CI", ci)
        for guard in (shared_path, require):
            with pytest.raises(pytest.fail.Exception, match="CI runs with ../shared/data, but .*not-there"):
                guard(missing)
        with pytest.raises(pytest.fail.Exception, match="CI runs with onnxruntime-training, but onnxruntime-training is not installed"):
            require_training()
    for ci in ("", "false", "0"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception, match="not-there is not present"):
            require(missing)
        with pytest.raises(pytest.skip.Exception, match="onnxruntime-training is not installed"):
            require_training()
    monkeypatch.undo()
    monkeypatch.setenv("CI", "true")
    require_training()  # installed here: the guard lets the test run
    assert require(tmp_path) == tmp_path


@needs_training
def test_poor_fidelity_after_labeled_fine_tuning_names_layers_instead_of_crashing():
    """Issue 23 item 5: with --data and --calib the state keeps no original weights; the attribution of a
    poor fidelity read them there and crashed. They come from the original model now."""
    result = onnx_dc.compress(mlp_model(sizes=(64, 48, 10)), data="digits", calib="digits", sparse_ratio=0.97,
                              class_num=2, epochs=1)
    assert not result.state.originals_kept and result.fidelity.poor()
    assert result.fidelity.ranked and {name for name, _ in result.fidelity.culprits} <= {"w0", "w1"}
    assert result.fidelity.culprits
