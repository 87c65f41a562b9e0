"""Everyday use, round two: layer names, progress off a terminal, help, and a quick ``--version``.

Each item of the issue has a test named after it. Commands run for real (onnxruntime, a
PyTorch export from ../shared/data/real, small models built with onnx.helper).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, SHARED_DATA, needs_training, shared_path
from test_cli import cli

from onnx_dc.cli import build_parser, main
from onnx_dc.errors import ArgumentError
from onnx_dc.graph.weights import layer_name
from onnx_dc.runtime.fidelity import Fidelity, OutputFidelity

RESNET20 = SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"
POOR = (OutputFidelity("y", 0.5, 0.8, 0.7),)




def subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))


def run_cli(*argv, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m onnx_dc ARGS`` in a new process, stdout and stderr piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "onnx_dc", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT, **kwargs)


# ----------------------------------------------------------------------------- 12. one name per layer

def test_item12_layer_name_is_the_node_with_the_weight_in_brackets_when_it_helps():
    pytorch = layer_name(["/layer1/layer1.0/conv1/Conv"], "onnx::Conv_241")
    assert pytorch == "/layer1/layer1.0/conv1/Conv [onnx::Conv_241]"
    assert layer_name(["ip1"], "ip1.weight") == "ip1"  # the weight's name only repeats the node's
    assert layer_name(["fc"], "fc1.weight") == "fc [fc1.weight]"  # another layer's name: not a repeat
    assert layer_name(["w"], "w") == "w"
    assert layer_name([""], "onnx::MatMul_7") == "onnx::MatMul_7"  # a node without a name
    assert layer_name(["first", "second"], "tied") == "first,second [tied]"
    assert layer_name(["/fc/Gemm"], "fc.weight", with_weight=False) == "/fc/Gemm"


def _one_layer_config(tmp_path, node: str) -> str:
    path = tmp_path / "one.yaml"
    path.write_text(f"defaults: {{skip: true}}\nnodes:\n  - match: {node}\n    skip: false\n"
                    "    sparse_ratio: 0.97\n    class_num: 2\n")
    return str(path)


def _random_inputs(tmp_path, n: int = 32) -> str:
    path = tmp_path / "inputs.npz"
    np.savez(path, input=np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32))
    return f"npz:{path}"


def _weight_of(model_path, node_name: str) -> str:
    node = next(n for n in onnx.load(model_path, load_external_data=False).graph.node if n.name == node_name)
    return node.input[1]


def _named_only_in_brackets(text: str, weight: str) -> bool:
    return all(text[m.start() - 1] == "[" for m in re.finditer(re.escape(weight), text))


def test_item12_table_and_fidelity_warning_name_a_pytorch_layer_alike(capsys, tmp_path):
    """ResNet-20 exported by PyTorch: node ``/conv1/Conv``, weight ``onnx::Conv_208``."""
    model = shared_path(RESNET20)
    node = "/conv1/Conv"
    weight = _weight_of(model, node)
    assert weight.startswith("onnx::Conv_")
    code, out, err = cli(capsys, "compress", model, "-o", tmp_path / "r.dc.onnx", "--config",
                         _one_layer_config(tmp_path, node), "--calib", _random_inputs(tmp_path))
    assert code == 0, err
    assert re.search(rf"^{re.escape(node)} +Conv +16x3x3x3 ", out, re.M), out  # the table's row
    warning = next(line for line in (out + err).splitlines() if line.startswith("warning: fidelity is poor"))
    assert f"layers most responsible: {node} [{weight}] (100% of the error)" in warning, warning
    assert _named_only_in_brackets(warning, weight)


@needs_training
def test_item12_prune_step_lines_name_a_pytorch_layer_alike(capsys, tmp_path):
    model = shared_path(RESNET20)
    node = "/conv1/Conv"
    weight = _weight_of(model, node)
    code, out, err = cli(capsys, "compress", model, "-o", tmp_path / "r.dc.onnx", "--config",
                         _one_layer_config(tmp_path, node), "--calib", _random_inputs(tmp_path), "--epochs", "1",
                         "--verbose")
    assert code == 0, err
    steps = [line for line in err.splitlines() if line.startswith("prune step")]
    assert steps and all(f"{node} [{weight}] 3.7% kept" in line for line in steps), steps  # summary and per layer
    assert _named_only_in_brackets("\n".join(steps), weight)


def test_item12_a_layer_whose_share_rounds_to_0_percent_is_not_named():
    names = {"w0": "fc0 [w0]", "w1": "fc1 [w1]", "w2": "fc2 [w2]"}
    fid = Fidelity(POOR, 16, "digits", (("w0", 0.42), ("w1", 0.012), ("w2", 0.004)), ranked=True, names=names)
    warning = fid.to_table().splitlines()[-1]
    assert "layers most responsible: fc0 [w0] (42% of the error), fc1 [w1] (1% of the error);" in warning
    assert "fc2" not in warning and "0% of the error" not in warning
    assert [d["name"] for d in fid.to_dict()["responsible_layers"]] == ["fc0 [w0]", "fc1 [w1]", "fc2 [w2]"]
    tiny = Fidelity(POOR, 16, "digits", (("w2", 0.004),), ranked=True, names=names)
    warning = tiny.to_table().splitlines()[-1]
    assert "fc2" not in warning and "none alone" in warning and "less than 1% of the error" in warning


# ----------------------------------------------------------------------------- 14. progress off a terminal

def test_item14_progress_off_a_terminal_is_a_plain_line_now_and_then(tmp_path, mlp_path):
    args = ("compress", mlp_path, "-o", tmp_path / "m.dc.onnx", "--sparse-ratio", "0.5", "--class-num", "8")
    every = run_cli(*args, env={"ONNX_DC_PROGRESS_INTERVAL": "0"})  # a line at every step
    assert every.returncode == 0, every.stderr
    lines = every.stderr.splitlines()
    assert re.search(r"^prune: 1/2 layers, \d+ s, about \d+ s left$", every.stderr, re.M), every.stderr
    assert "share: 2/2 layers, " in every.stderr
    assert "\r" not in every.stderr and "\x1b" not in every.stderr and "%|" not in every.stderr
    assert all(line == line.strip() or line.startswith("  ") for line in lines)
    rare = run_cli(*args[:3], tmp_path / "n.dc.onnx", *args[4:], env={"ONNX_DC_PROGRESS_INTERVAL": "3600"})
    assert rare.returncode == 0 and not re.search(r"^(prune|share): ", rare.stderr, re.M), rare.stderr
    quiet = run_cli(*args[:3], tmp_path / "q.dc.onnx", *args[4:], "-q", env={"ONNX_DC_PROGRESS_INTERVAL": "0"})
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_item14_the_interval_variable_falls_back_to_ten_seconds(monkeypatch):
    from onnx_dc import progress

    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "2.5")
    assert progress.plain_interval() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.INTERVAL_VARIABLE, bad)
        assert progress.plain_interval() == progress.PLAIN_INTERVAL == 10.0


# ----------------------------------------------------------------------------- 17. help

def test_item17_every_option_of_every_command_has_help_text():
    empty = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in subcommands().items()
             for a in p._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not empty, f"options without help text: {empty}"


def test_item17_help_shows_defaults_and_never_none():
    for name, p in subcommands().items():
        text = " ".join(p.format_help().split())
        assert "default: None" not in text and "(default: False)" not in text, name
        for a in p._actions:
            if a.option_strings and a.nargs != 0 and a.default is not None and a.help:
                assert "default" in a.help or f"(default: {a.default})" in text, f"{name} {a.option_strings}"
    assert "--split {test,train} which part of --data to score on (default: test)" in " ".join(
        subcommands()["eval"].format_help().split())


def test_item17_settings_defaults_in_help_are_those_of_the_settings():
    from onnx_dc.config import Settings

    text = " ".join(subcommands()["compress"].format_help().split())
    s = Settings()
    assert f"(default: the config's, else {s.class_num})" in text
    assert f"(default: the config's, else {s.sparse_ratio:g}: no pruning)" in text
    assert f"(default: the config's, else {s.centroid_init.value})" in text
    assert f"(default: the config's, else {s.form.value})" in text
    assert f"(default: the config's, else {s.seed})" in text


def test_item17_a_command_mentions_only_options_it_takes():
    """finetune's help named --calib (per-channel --mean / --std), which finetune does not take."""
    for name, p in subcommands().items():
        text = re.sub(r"onnx-dc [a-z-]+ --[a-z-]+", "", " ".join(p.format_help().split()))  # named as another's
        own = {s for a in p._actions for s in a.option_strings}
        foreign = sorted(set(re.findall(r"--[a-z][a-z-]*", text)) - own)
        assert not foreign, f"{name} --help mentions {foreign}"


def test_item17_a_mistyped_option_gets_the_subcommands_usage_and_the_closest_option(capsys, mlp_path, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["compress", str(mlp_path), "-o", str(tmp_path / "m.dc.onnx"), "--sparse-ratoi", "0.5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: onnx-dc compress ")
    assert err.rstrip().splitlines()[-1] == ("onnx-dc compress: error: unrecognized arguments: --sparse-ratoi 0.5 "
                                             "(did you mean --sparse-ratio?)")
    assert not (tmp_path / "m.dc.onnx").exists()
    with pytest.raises(SystemExit):
        main(["eval", str(mlp_path), "--data=digits", "--limt=5", "--jsn"])
    last = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert last == ("onnx-dc eval: error: unrecognized arguments: --limt=5 --jsn "
                    "(did you mean --limit for --limt, --json for --jsn?)")
    with pytest.raises(SystemExit):
        main(["pack", str(mlp_path), "-o", str(tmp_path / "p.dcz"), "--zzz"])
    assert capsys.readouterr().err.rstrip().endswith("error: unrecognized arguments: --zzz")


def test_item17_install_hints_fit_a_source_checkout(monkeypatch):
    from onnx_dc.analysis.sweep import ray_module
    from onnx_dc.cli import argcheck

    assert "pip install" in (setup := (ROOT / "scripts" / "setup_env.sh").read_text()) and " -e ." in setup
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extras were not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ArgumentError) as plot:
        argcheck.plotting()
    with pytest.raises(ArgumentError) as ray:
        ray_module()
    for err, extra in ((plot, "plot"), (ray, "ray")):
        assert f"in the source checkout .venv/bin/pip install -e '.[{extra}]'" in str(err.value)
        assert f"pip install 'onnx_dc[{extra}]'" in str(err.value)


def test_item17_readme_says_how_to_run_the_command():
    readme = (ROOT / "README.md").read_text()
    commands = readme[readme.index("## Commands"):]
    commands = commands[:commands.index("\n### ")]
    assert "`.venv/bin/onnx-dc ...`" in commands and "`source .venv/bin/activate`" in commands


# ----------------------------------------------------------------------------- 20. a quick --version

HEAVY = ("onnxruntime", "sklearn", "onnx", "numpy", "tqdm", "yaml", "scipy", "PIL", "constriction")


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_item20_version_and_help_import_no_heavy_module(flag):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "onnx_dc", flag], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0 and ("onnx-dc" in proc.stdout), proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "onnx_dc.cli" in imported  # the import times were read
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, heavy


def test_item20_the_package_still_gives_every_public_name():
    """The facade imports a name's module on first use; ``onnx_dc.report`` stays the function even after the
    submodule ``onnx_dc/report.py`` is imported first."""
    code = ("import onnx_dc.report as first, onnx_dc, onnx_dc.api as api; "
            "print(onnx_dc.report is api.report, first is api.report, "
            "all(getattr(onnx_dc, n) is not None for n in onnx_dc.__all__), "
            "sorted(set(onnx_dc.__all__) - set(dir(onnx_dc))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True", "[]"]
    fresh = subprocess.run([sys.executable, "-c", "import sys, onnx_dc; print('onnx' in sys.modules, "
                            "onnx_dc.compress.__module__, 'onnx' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT)
    assert fresh.stdout.split() == ["False", "onnx_dc.api", "True"], fresh.stderr
