"""The README's example outputs are what their commands print now (scripts/readme_examples.py writes them).

The fast examples run again here, in README order, in a fresh folder, exactly as the script runs
them. What ``mnist:`` reads comes from a local HTTP server serving ../shared/data/mnist into a fresh
cache, so the examples that read MNIST need ../shared/data (they skip without it, and fail in CI);
the others need nothing beyond the repository.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import MNIST_DIR, ROOT, shared_path
from http_mirror import dead_url, serving

sys.path.insert(0, str(ROOT / "scripts"))
import readme_examples  # noqa: E402

README = ROOT / "README.md"
EXAMPLES = readme_examples.parse(README.read_text())
BY_NAME = {e.name: e for e in EXAMPLES}
FAST = [e for e in EXAMPLES if e.fast]
SCRIPT = ROOT / "scripts" / "readme_examples.py"


def reads_mnist(name: str) -> bool:
    """Whether the example, or one it runs after, reads fetched MNIST."""
    return any(readme_examples.FETCHED.search(c) for e in readme_examples.with_prerequisites(EXAMPLES, [name])
               for c in e.commands)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, str]:
    """What the fast examples print now: all of them with ../shared/data/mnist, else those that do not read MNIST."""
    cache = str(tmp_path_factory.mktemp("cache"))
    if MNIST_DIR.is_dir():
        with serving(MNIST_DIR) as mirror:
            return readme_examples.run(FAST, env={"ONNX_DC_CACHE": cache, "ONNX_DC_MNIST_URL": mirror.url})
    offline = [e for e in FAST if not reads_mnist(e.name)]
    return readme_examples.run(offline, env={"ONNX_DC_CACHE": cache, "ONNX_DC_MNIST_URL": dead_url()})


@pytest.mark.parametrize("name", [e.name for e in FAST])
def test_fast_example_prints_what_the_readme_shows(outputs, name):
    if reads_mnist(name):
        shared_path(MNIST_DIR)
    shown, now = readme_examples.normalised(BY_NAME[name].text), readme_examples.normalised(outputs[name])
    assert now == shown, "\n" + readme_examples.differences([BY_NAME[name]], outputs)[name]


def test_every_command_block_is_an_example_and_the_fast_ones_need_only_the_repository():
    blocks = [b for b in README.read_text().split("```")[1::2] if "\n$ " in "\n" + b]
    assert len(blocks) == len(EXAMPLES) >= 15
    assert {"compress", "report", "pack", "unpack"} <= {e.name for e in FAST}
    for example in FAST:
        assert not any("../shared" in c for c in example.commands), example.name
    for example in EXAMPLES:  # the stale numbers of the issue are gone
        assert "74261 B" not in example.text and "23.2x" not in example.text


def test_malformed_markers_are_named():
    block = "```\n$ echo hi\nhi\n```\n<!-- /example -->"
    with pytest.raises(readme_examples.ReadmeError, match="README.md:1: the marker must be followed"):
        readme_examples.parse("<!-- example: a fast -->\n```\n$ echo hi\n```\n")
    with pytest.raises(readme_examples.ReadmeError, match="fast example 'b' cannot read the files of slow 'a'"):
        readme_examples.parse(f"<!-- example: a slow -->\n{block}\n<!-- example: b fast after=a -->\n{block}\n")
    with pytest.raises(readme_examples.ReadmeError, match="after=c names no example above 'b'"):
        readme_examples.parse(f"<!-- example: b fast after=c -->\n{block}\n")
    with pytest.raises(readme_examples.ReadmeError, match="README.md:2: write the marker as"):
        readme_examples.parse(f"\n<!-- example: b quick -->\n{block}\n")


def test_seconds_are_compared_as_placeholders():
    a = 'retrain 1: 938 steps in 3.3 s\n{"n": 10, "seconds": 0.035}  '
    b = 'retrain 1: 938 steps in 12.0 s\n{"n": 10, "seconds": 1.5}'
    assert readme_examples.normalised(a) == readme_examples.normalised(b)
    assert readme_examples.normalised(a) != readme_examples.normalised(b.replace("938", "939"))


def test_check_names_the_block_that_differs_and_a_rewrite_fixes_only_that_block(tmp_path):
    readme = tmp_path / "README.md"
    text = ("# Title\n\nSome prose.\n<!-- example: version fast -->\n```\n$ onnx-dc --version\nonnx-dc 0.0.0\n```\n"
            "<!-- /example -->\nMore prose.\n<!-- example: listing fast after=version -->\n```\n$ ls\nmodels\n```\n"
            "<!-- /example -->\n")
    readme.write_text(text)

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), *args], capture_output=True,
                              text=True)

    check = script("--check")
    assert check.returncode == 1, check.stderr
    assert f"{readme}: example 'version' differs" in check.stderr and "'listing' differs" not in check.stderr
    assert "1 of 2 example(s) as in" in check.stderr and readme.read_text() == text
    written = script()
    assert written.returncode == 0 and f"rewrote version in {readme}" in written.stderr
    version = subprocess.run([sys.executable, "-m", "onnx_dc", "--version"], capture_output=True, text=True).stdout
    assert readme.read_text() == text.replace("onnx-dc 0.0.0\n", version)
    assert script("--check", "listing").returncode == 0 and script("--check").returncode == 0
