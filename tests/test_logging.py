"""Messages go through the ``onnx_dc`` logger; the command line prints them on stderr and turns a bug into one line.

The library only logs (a NullHandler on ``onnx_dc``); the API's ``echo=`` forwards the
lines of its call; the CLI sets the level (--quiet: errors only, --verbose: DEBUG too) and
removes its handler when it returns.
"""

from __future__ import annotations

import logging
import threading

import pytest
from conftest import mlp_model, needs_training
from test_cli import cli

import onnx_dc
from onnx_dc import pipeline, progress

LOGGER = logging.getLogger("onnx_dc")




def assert_logger_as_found():
    """The library's own setup only: a NullHandler, no level, propagating (no CLI handler left behind)."""
    assert [type(h) for h in LOGGER.handlers] == [logging.NullHandler]
    assert LOGGER.level == logging.NOTSET and LOGGER.propagate


# ----------------------------------------------------------------------------- the library

def test_the_library_logs_through_the_onnx_dc_logger(caplog):
    assert_logger_as_found()
    caplog.set_level(logging.DEBUG, logger="onnx_dc")
    onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8, calib="digits")
    waves = [r for r in caplog.records if r.getMessage().startswith("data-aware: wave ")]
    assert waves and {(r.name, r.levelno) for r in waves} == {("onnx_dc.calibrate", logging.DEBUG)}
    stages = [r.getMessage() for r in caplog.records if r.name == "onnx_dc.pipeline"]
    assert stages[0].startswith("stage read: model: ") and stages[-1].startswith("stage fidelity: worst output cosine")
    assert all(r.name.startswith("onnx_dc.") for r in caplog.records if r.name != "root")


@needs_training
def test_fine_tuning_logs_one_line_per_epoch_at_info(caplog):
    caplog.set_level(logging.INFO, logger="onnx_dc")
    onnx_dc.compress(mlp_model(sizes=(64, 32, 10)), None, sparse_ratio=0.5, class_num=8, data="digits", epochs=2)
    epochs = [r for r in caplog.records if r.name == "onnx_dc.train.loop" and " epoch " in r.getMessage()]
    assert [r.getMessage().split(" loss")[0] for r in epochs] == [
        "  retrain 1: epoch 1/2", "  retrain 1: epoch 2/2", "  codebook: epoch 1/2", "  codebook: epoch 2/2"]
    assert {r.levelno for r in epochs} == {logging.INFO}


@needs_training
def test_echo_receives_the_lines_of_its_call(caplog):
    lines: list[str] = []
    onnx_dc.compress(mlp_model(sizes=(64, 32, 10)), None, sparse_ratio=0.5, class_num=8, data="digits", epochs=1,
                     echo=lines.append)
    assert any(line.startswith("prune step 1/1: ") for line in lines)
    assert any(line.startswith("  codebook: epoch 1/1 loss ") for line in lines)
    assert not any(line.startswith("stage ") for line in lines)  # DEBUG details are not forwarded
    assert_logger_as_found()  # the forwarding handler and the lowered level are gone
    assert not [r for r in caplog.records if r.name.startswith("onnx_dc")]  # logging as configured: WARNING


def test_echo_takes_the_info_lines_of_its_own_thread():
    log = logging.getLogger("onnx_dc.test_logging")
    lines: list[str] = []
    with progress.echoed(lines.append):
        log.info("mine %d", 1)
        log.debug("a detail")
        other = threading.Thread(target=log.info, args=("another thread's",))
        other.start()
        other.join()
        log.warning("a warning")
    log.info("after the call")
    assert lines == ["mine 1", "a warning"]
    assert_logger_as_found()


# ----------------------------------------------------------------------------- the command line

def test_quiet_prints_nothing_on_stderr_and_normal_prints_the_warning(capsys, mlp_path, tmp_path):
    code, out, err = cli(capsys, "compress", mlp_path, "-o", tmp_path / "q.dc.onnx", "--class-num", "8", "--quiet")
    assert code == 0 and out == "" and err == ""
    code, out, err = cli(capsys, "compress", mlp_path, "-o", tmp_path / "n.dc.onnx", "--class-num", "8")
    assert code == 0 and "wrote" in out
    assert err.startswith("accuracy not checked") and err.count("\n") == 1
    assert_logger_as_found()


def test_verbose_shows_debug_lines_without_carriage_returns(capsys, mlp_path, tmp_path):
    args = ["compress", mlp_path, "-o", tmp_path / "v.dc.onnx", "--class-num", "8", "--calib", "digits"]
    code, _, err = cli(capsys, *args, "--verbose")
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == f"stage read: {mlp_path}: 3 nodes"
    assert any(line.startswith("data-aware: wave ") for line in lines)
    assert "\r" not in err  # stderr is not a terminal here: plain lines, no bars
    code, _, err = cli(capsys, *args[:3], tmp_path / "n.dc.onnx", *args[4:])
    assert code == 0 and err == ""  # the details are DEBUG
    assert_logger_as_found()


@pytest.fixture
def bug_in_pruning(monkeypatch):
    def broken(state):
        return 1 / 0

    monkeypatch.setattr(pipeline, "prune", broken)


def test_a_bug_is_one_line_naming_it_and_exit_1(capsys, mlp_path, tmp_path, bug_in_pruning):
    code, out, err = cli(capsys, "compress", mlp_path, "-o", tmp_path / "o.dc.onnx", "--class-num", "8")
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("onnx-dc: bug: ZeroDivisionError: division by zero (at onnx_dc/pipeline.py:")
    assert " in data_free)" in err and "bug in onnx-dc" in err and "report it with the command line" in err
    assert not (tmp_path / "o.dc.onnx").exists()
    assert_logger_as_found()


def test_debug_shows_the_traceback_of_a_bug(capsys, mlp_path, tmp_path, bug_in_pruning):
    code, _, err = cli(capsys, "compress", mlp_path, "-o", tmp_path / "o.dc.onnx", "--class-num", "8", "--debug")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):") and "ZeroDivisionError: division by zero" in err
    assert 'onnx_dc/pipeline.py", line' in err and "in data_free" in err
    assert err.splitlines()[-1].startswith("onnx-dc: bug: ")


def test_a_user_error_stays_one_line_with_debug(capsys, tmp_path):
    code, _, err = cli(capsys, "compress", tmp_path / "missing.onnx", "-o", tmp_path / "o.dc.onnx", "--debug")
    assert code == 2 and err.startswith("onnx-dc: error: ") and err.count("\n") == 1


def test_reading_the_stored_preprocessing_catches_only_unreadable_models(capsys, tmp_path, monkeypatch):
    """compress --scale reads the model's metadata first: a file that is not ONNX is left for compress to name,
    a failure of anything else is a bug."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x01\x02 not an onnx model")
    args = ["compress", junk, "-o", tmp_path / "o.dc.onnx", "--class-num", "8", "--scale", "0.0625"]
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.startswith("onnx-dc: error: ") and "junk.onnx" in err and err.count("\n") == 1

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    import onnx

    monkeypatch.setattr(onnx, "load_model", broken)
    code, _, err = cli(capsys, *args)
    assert code == 1 and err.startswith("onnx-dc: bug: KeyError: 'a bug' (at onnx_dc/cli/compress.py:")
