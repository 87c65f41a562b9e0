"""``mnist:`` and ``fashion-mnist:`` without a folder: fetched once into the cache, checked against pinned hashes.

Every download goes to a local HTTP server in a thread (tests/http_mirror.py): the real files of
../shared/data/mnist where a test needs their pinned hashes, small synthetic IDX files (their
hashes put into the pinned table) everywhere else.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MNIST_DIR, ROOT, shared_path
from http_mirror import IDX_NAMES, dead_url, serving, synthetic_mnist, write_idx_gz
from tqdm import tqdm

from onnx_dc.cli import main
from onnx_dc.data import fetch
from onnx_dc.data.calib import load_calib, parse_calib_spec
from onnx_dc.data.datasets import check_data_spec, load_dataset
from onnx_dc.errors import DataError

LENET = ROOT / "models" / "lenet_300_100.onnx"
TEST_FILES = IDX_NAMES["test"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, set as ONNX_DC_CACHE."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("ONNX_DC_CACHE", str(folder))
    return folder


@pytest.fixture
def synthetic(tmp_path, monkeypatch) -> Path:
    """A folder of synthetic MNIST files whose hashes are the pinned ones for the test."""
    folder = tmp_path / "mirror"
    monkeypatch.setitem(fetch.SHA256, "mnist", synthetic_mnist(folder))
    return folder


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_real_mnist_is_fetched_once_then_read_from_the_cache(cache, monkeypatch):
    source = shared_path(MNIST_DIR)
    with serving(source) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        fetched = load_dataset("mnist:", "test")
        again = load_dataset("mnist", "test")
    assert sorted(mirror.requests) == sorted(f"/{name}" for name in TEST_FILES)  # each file once, no more
    direct = load_dataset(f"mnist:{source}", "test")
    assert len(fetched) == 10000 and fetched.name == "mnist/test"
    np.testing.assert_array_equal(fetched.images, direct.images)
    np.testing.assert_array_equal(again.labels, direct.labels)
    assert files_in(cache / "mnist") == sorted([*TEST_FILES, *(name + ".sha256" for name in TEST_FILES)])
    # the server has stopped: the cache answers without the network
    assert len(load_dataset("mnist:", "test")) == 10000
    assert check_data_spec("mnist:").path is None


def test_synthetic_files_fetched_into_the_cache(cache, synthetic, monkeypatch):
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url.rstrip("/"))  # the slash is added
        folder = fetch.fetched("mnist")
        assert fetch.fetched("mnist") == folder == cache / "mnist"
    assert len(mirror.requests) == 4
    assert load_dataset("mnist:", "train").images.shape == (40, 28, 28, 1)
    assert not any(name.endswith(".part") for name in files_in(folder))


def test_a_file_that_changed_in_the_cache_is_checked_and_fetched_again(cache, synthetic, monkeypatch):
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        fetch.fetched("mnist", TEST_FILES)
        write_idx_gz(cache / "mnist" / TEST_FILES[1], np.zeros(20, np.uint8))  # other content, other size
        labels = load_dataset("mnist:").labels
    assert mirror.requests.count(f"/{TEST_FILES[1]}") == 2
    np.testing.assert_array_equal(labels, load_dataset(f"mnist:{synthetic}").labels)


def test_files_put_into_the_cache_by_hand_are_checked_once_without_the_network(cache, synthetic, monkeypatch):
    monkeypatch.setenv("ONNX_DC_MNIST_URL", dead_url())
    (cache / "mnist").mkdir(parents=True)
    for name in TEST_FILES:
        (cache / "mnist" / name).write_bytes((synthetic / name).read_bytes())
    assert len(load_dataset("mnist:")) == 20
    assert (cache / "mnist" / f"{TEST_FILES[0]}.sha256").read_text().startswith(fetch.SHA256["mnist"][TEST_FILES[0]])


def test_wrong_content_is_refused_and_nothing_is_kept(cache, synthetic, monkeypatch):
    expected = fetch.SHA256["mnist"][TEST_FILES[0]]
    got = write_idx_gz(synthetic / TEST_FILES[0], np.ones((20, 28, 28), np.uint8))  # not what is pinned
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        with pytest.raises(DataError) as err:
            load_dataset("mnist:")
    url = f"{mirror.url}{TEST_FILES[0]}"
    assert str(err.value) == (f"{url}: {TEST_FILES[0]} has content sha256 {got}, expected {expected}; nothing was "
                              "kept. Check ONNX_DC_MNIST_URL, or pass mnist:DIR with the four files")
    assert files_in(cache / "mnist") == []


def test_a_truncated_download_is_refused(cache, synthetic, monkeypatch):
    whole = (synthetic / TEST_FILES[0]).read_bytes()
    (synthetic / TEST_FILES[0]).write_bytes(whole[: len(whole) // 2])
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        with pytest.raises(DataError, match=f"{TEST_FILES[0]} is not a complete gzip file, expected "):
            load_dataset("mnist:")
    assert files_in(cache / "mnist") == []


def test_offline_is_one_line_naming_the_file_url_and_what_to_do(cache, monkeypatch):
    url = dead_url()
    monkeypatch.setenv("ONNX_DC_MNIST_URL", url)
    with pytest.raises(DataError) as err:
        check_data_spec("mnist:")
    message = str(err.value)
    assert re.fullmatch(rf"cannot download mnist t10k-images-idx3-ubyte\.gz from {re.escape(url)}t10k-images-idx3-"
                        r"ubyte\.gz \([^()\n]*refused[^()\n]*\); pass mnist:DIR with the four files, or set "
                        r"ONNX_DC_MNIST_URL", message), message
    assert files_in(cache / "mnist") == []


def test_an_http_error_is_named(cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with serving(empty) as mirror:
        monkeypatch.setenv("ONNX_DC_FASHION_MNIST_URL", mirror.url)
        with pytest.raises(DataError, match=r"cannot download fashion-mnist train-images-idx3-ubyte\.gz from .*"
                                            r"\(HTTP 404 File not found\); pass fashion-mnist:DIR with the four "
                                            r"files, or set ONNX_DC_FASHION_MNIST_URL"):
            load_dataset("fashion-mnist", "train")


def test_a_cache_that_cannot_be_written_says_which_setting_to_change(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ONNX_DC_CACHE", str(blocker / "cache"))
    with pytest.raises(DataError, match=r"cannot create the cache folder .*; set ONNX_DC_CACHE to a writable folder"):
        fetch.fetched("mnist")


class Terminal(io.StringIO):
    """What the bars are drawn on: a stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(cache, synthetic, monkeypatch):
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        monkeypatch.setattr(sys, "stderr", Terminal())
        fetch.fetched("mnist", TEST_FILES[:1])
        drawn = sys.stderr.getvalue()
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        fetch.fetched("mnist", TEST_FILES[1:])
        piped = sys.stderr.getvalue()
    size = tqdm.format_sizeof((synthetic / TEST_FILES[0]).stat().st_size)  # 15.7k: the bar's total, in bytes
    assert re.search(rf"mnist t10k-images-idx3-ubyte\.gz: +0%\|[^|]*\| 0\.00/{re.escape(size)} .*B/s", drawn), drawn
    assert piped == ""


def test_cache_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNX_DC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_root() == tmp_path / "home" / ".cache" / "onnx_dc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_root() == tmp_path / "xdg" / "onnx_dc"
    monkeypatch.setenv("ONNX_DC_CACHE", str(tmp_path / "mine"))
    assert fetch.cache_root() == tmp_path / "mine"
    assert fetch.base_url("fashion-mnist") == fetch.MIRRORS["fashion-mnist"]


def test_calib_and_eval_commands_take_mnist_without_a_folder(cache, synthetic, monkeypatch, capsys):
    with serving(synthetic) as mirror:
        monkeypatch.setenv("ONNX_DC_MNIST_URL", mirror.url)
        data = load_calib(parse_calib_spec("mnist:", limit=8), onnx.load(LENET))
        code = main(["eval", str(LENET), "--data", "mnist:"])
    out = capsys.readouterr().out
    assert len(data.calib) == 8 and len(data.heldout) == 20 and data.source == "mnist"
    assert code == 0 and re.fullmatch(rf"{LENET}: top-1 accuracy \S+ \(\d+/20\) on mnist: \[nchw, x \* 0\.00392157\]\n",
                                      out), out
    code = main(["eval", str(LENET), "--against", str(LENET), "--calib", "mnist:"])  # the cache, no server
    assert code == 0 and "fidelity on 20 held-out sample(s) of mnist" in capsys.readouterr().out


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_dc", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})


def test_cli_eval_on_fetched_mnist(tmp_path):
    source = shared_path(MNIST_DIR)
    env = {"ONNX_DC_CACHE": str(tmp_path / "cache")}
    with serving(source) as mirror:
        proc = run_cli("eval", "models/lenet_300_100.onnx", "--data", "mnist:", env={**env, "ONNX_DC_MNIST_URL": mirror.url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("models/lenet_300_100.onnx: top-1 accuracy 0.9851 (9851/10000) on mnist: "
                           "[nchw, x * 0.00392157]\n")
    fetched = [ln for ln in proc.stderr.splitlines() if ln.startswith("fetched mnist ")]
    assert len(fetched) == 2 and f"into {tmp_path / 'cache' / 'mnist'}" in fetched[0]  # one line per file, on stderr
    again = run_cli("eval", "models/lenet_300_100.onnx", "--data", "mnist:", env=env)  # server stopped
    assert again.returncode == 0 and again.stdout == proc.stdout and again.stderr == ""


def test_cli_offline_is_exit_2_and_one_line(tmp_path):
    url = dead_url()
    proc = run_cli("eval", "models/lenet_300_100.onnx", "--data", "mnist:",
                   env={"ONNX_DC_CACHE": str(tmp_path / "cache"), "ONNX_DC_MNIST_URL": url})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"onnx-dc: error: --data: cannot download mnist t10k-images-idx3-ubyte.gz from {url}")
    assert proc.stderr.endswith("; pass mnist:DIR with the four files, or set ONNX_DC_MNIST_URL\n")
