"""Run the README's example commands and write what they print into README.md, or check that they still print it.

    .venv/bin/python scripts/readme_examples.py                       # run every example, rewrite README.md
    .venv/bin/python scripts/readme_examples.py --fast                # only the fast ones (a few seconds each)
    .venv/bin/python scripts/readme_examples.py --check [--fast] [NAME ...]   # compare; exit 1 naming each block
    .venv/bin/python scripts/readme_examples.py --list

An example is a fenced block of README.md between two marker lines:

    <!-- example: NAME fast|slow [after=NAME,...] -->
    ```
    $ command
    what it prints
    ```
    <!-- /example -->

The commands (the lines starting with ``$ ``) are read from the README itself, so the command
shown and the output shown cannot drift apart. They run in README order with bash, in one fresh
folder holding links to the repository's models/ and .venv (and ``../shared`` beside it, when
the repository has one), ``onnx-dc`` being ``python -m onnx_dc`` of the Python running this
script, stdout and stderr together in the order a terminal shows them (no progress bars: stderr
is not a terminal). ``after=`` names the examples whose files an example reads; selecting an
example runs those first. The MNIST / Fashion-MNIST files that ``mnist:`` / ``fashion-mnist:``
read are fetched into the cache before the first example (``ONNX_DC_CACHE``, ``ONNX_DC_MNIST_URL``
apply), so no output shows a download.

What varies from run to run (seconds) is compared as a placeholder, and a rewrite keeps the
README's text of a block that differs only there. ``fast`` examples are the ones
tests/test_readme_examples.py runs again.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- example: (?P<name>[\w.-]+) (?P<speed>fast|slow)(?: after=(?P<after>[\w.,-]+))? -->")
END = "<!-- /example -->"
FENCE = "```"
PROMPT = "$ "
LINKS = ("models", ".venv")  # what the commands read from the repository, linked into the folder they run in
# Parts of an output that change from run to run, and what they are compared as.
VARIABLE = (
    (re.compile(r'"seconds": [0-9.e+-]+'), '"seconds": S'),
    (re.compile(r"\bin \d+(?:\.\d+)? s\b"), "in S s"),
)
# A dataset spec without a folder: its files are fetched before the examples run.
FETCHED = re.compile(r"(?<![\w-])(mnist|fashion-mnist):?(?=\s|$)")


class ReadmeError(Exception):
    """The README's example markers are not well formed."""


@dataclass(frozen=True)
class Example:
    """One marked block: its name, whether the tests run it, the examples it reads files of, its body lines."""

    name: str
    fast: bool
    after: tuple[str, ...]
    body: tuple[str, ...]
    line: int  # 1-based line of the marker in the README

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(ln[len(PROMPT):] for ln in self.body if ln.startswith(PROMPT))

    @property
    def text(self) -> str:
        return "\n".join(self.body)


def parse(text: str, source: str = "README.md") -> list[Example]:
    """The examples of a README's text, in order.

    Raises:
        ReadmeError: a marker without its fenced block or end marker, a block whose first line is
            not a command, a name given twice, an ``after=`` that names no earlier example, or a
            fast example after a slow one.
    """
    lines = text.split("\n")
    examples: list[Example] = []
    for i, line in enumerate(lines):
        if not line.startswith("<!-- example"):
            continue
        where = f"{source}:{i + 1}"
        found = MARKER.fullmatch(line)
        if not found:
            raise ReadmeError(f"{where}: write the marker as <!-- example: NAME fast|slow [after=NAME,...] -->")
        try:
            close = lines.index(FENCE, i + 2)
        except ValueError:
            close = -1
        if not lines[i + 1].startswith(FENCE) or close < 0 or close + 1 >= len(lines) or lines[close + 1] != END:
            raise ReadmeError(f"{where}: the marker must be followed by a fenced block and {END}")
        body = tuple(lines[i + 2:close])
        if not body or not body[0].startswith(PROMPT):
            raise ReadmeError(f"{where}: the block must start with a command line ({PROMPT}...)")
        example = Example(found["name"], found["speed"] == "fast",
                          tuple(found["after"].split(",")) if found["after"] else (), body, i + 1)
        earlier = {e.name: e for e in examples}
        if example.name in earlier:
            raise ReadmeError(f"{where}: example {example.name!r} is named twice")
        for name in example.after:
            if name not in earlier:
                raise ReadmeError(f"{where}: after={name} names no example above {example.name!r}")
            if example.fast and not earlier[name].fast:
                raise ReadmeError(f"{where}: fast example {example.name!r} cannot read the files of slow {name!r}")
        examples.append(example)
    return examples


def with_prerequisites(examples: list[Example], names: Iterable[str]) -> list[Example]:
    """``names`` and, transitively, the examples they run after, in README order."""
    by_name = {e.name: e for e in examples}
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in by_name:
            raise ReadmeError(f"no example named {name!r} (--list shows them)")
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].after)
    return [e for e in examples if e.name in wanted]


def normalised(text: str) -> str:
    """The text with trailing blanks and the parts that vary from run to run replaced."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    for pattern, placeholder in VARIABLE:
        text = pattern.sub(placeholder, text)
    return text


def run(examples: list[Example], env: Mapping[str, str] | None = None, python: str = sys.executable,
        echo: bool = False) -> dict[str, str]:
    """Run the examples' commands in order in a fresh folder; returns each example's new body text.

    Args:
        examples: what to run (their prerequisites included; see :func:`with_prerequisites`).
        env: environment variables set for the commands on top of this process's.
        python: the Python whose ``-m onnx_dc`` is ``onnx-dc``.
        echo: print each command on stderr as it starts.
    """
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as tmp:
        top = Path(tmp)
        work, bin_dir = top / ROOT.name, top / "bin"
        work.mkdir()
        bin_dir.mkdir()
        for name in LINKS:
            if (ROOT / name).exists():
                (work / name).symlink_to(ROOT / name)
        if (ROOT.parent / "shared").is_dir():
            (top / "shared").symlink_to(ROOT.parent / "shared")
        shim = bin_dir / "onnx-dc"
        shim.write_text(f'#!/bin/sh\nexec "{python}" -m onnx_dc "$@"\n')
        shim.chmod(0o755)
        full_env = {**os.environ, **(env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONUNBUFFERED": "1",  # stdout and stderr interleaved as they are written
                    "ONNX_DC_PROGRESS_INTERVAL": "1e9"}  # no timed progress lines off a terminal: they vary
        _prefetch(examples, full_env, python)
        results = {}
        for example in examples:
            lines = []
            for command in example.commands:
                if echo:
                    print(f"[{example.name}] $ {command}", file=sys.stderr, flush=True)
                proc = subprocess.run(["bash", "-c", command], cwd=work, env=full_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
                output = proc.stdout.replace(f"{work}/", "").replace(str(top), "TMP").rstrip("\n")
                lines += [PROMPT + command, *(output.split("\n") if output else [])]
            results[example.name] = "\n".join(line.rstrip() for line in lines)
        return results


def _prefetch(examples: list[Example], env: Mapping[str, str], python: str) -> None:
    kinds = sorted({m.group(1) for e in examples for c in e.commands for m in FETCHED.finditer(c)})
    if not kinds:
        return
    code = f"from onnx_dc.data.fetch import fetched\nfor kind in {kinds!r}:\n    fetched(kind)\n"
    proc = subprocess.run([python, "-c", code], env=dict(env), capture_output=True, text=True)
    if proc.returncode:
        raise ReadmeError(f"cannot fetch {', '.join(kinds)} for the examples: {proc.stderr.strip()}")


def differences(examples: list[Example], results: Mapping[str, str]) -> dict[str, str]:
    """Example name -> a diff of the README's block against the new output, for the blocks that differ."""
    out = {}
    for example in examples:
        old, new = normalised(example.text), normalised(results[example.name])
        if old != new:
            diff = difflib.unified_diff(old.split("\n"), new.split("\n"), "README.md", "now", lineterm="")
            out[example.name] = "\n".join(diff)
    return out


def rewrite(readme: Path, results: Mapping[str, str]) -> list[str]:
    """Put the new outputs into ``readme`` (read again now, so that edits made meanwhile stay); returns the
    names of the blocks that changed. A block that differs only in what varies keeps its text."""
    text = readme.read_text()
    lines = text.split("\n")
    changed = []
    for example in reversed(parse(text, str(readme))):
        new = results.get(example.name)
        if new is None or normalised(new) == normalised(example.text):
            continue
        start = example.line + 1  # index of the first body line (after the marker and the opening fence)
        lines[start:start + len(example.body)] = new.split("\n")
        changed.append(example.name)
    if changed:
        fd, tmp = tempfile.mkstemp(prefix=f".{readme.name}.", suffix=".tmp", dir=readme.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(lines))
            os.chmod(tmp, readme.stat().st_mode & 0o7777)
            os.replace(tmp, readme)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="examples to run (default: all; their after= examples run too)")
    parser.add_argument("--fast", action="store_true", help="only the fast examples")
    parser.add_argument("--check", action="store_true", help="compare with the README instead of writing it")
    parser.add_argument("--list", action="store_true", help="list the examples")
    parser.add_argument("--readme", type=Path, default=README, help="the README to read and write")
    args = parser.parse_args(argv)
    try:
        examples = parse(args.readme.read_text(), str(args.readme))
        if args.list:
            for e in examples:
                after = f" after {','.join(e.after)}" if e.after else ""
                print(f"{e.name:16} {'fast' if e.fast else 'slow'}  line {e.line}{after}")
            return 0
        chosen = [e for e in examples if (not args.names or e.name in args.names) and (e.fast or not args.fast)]
        for name in args.names:
            with_prerequisites(examples, [name])  # an unknown name is an error
        selected = with_prerequisites(examples, [e.name for e in chosen])
        results = run(selected, echo=True)
    except ReadmeError as err:
        print(f"readme_examples: {err}", file=sys.stderr)
        return 2
    if args.check:
        diffs = differences(chosen, results)
        for name, diff in diffs.items():
            print(f"{args.readme}: example {name!r} differs from what its commands print now:\n{diff}", file=sys.stderr)
        print(f"{len(chosen) - len(diffs)} of {len(chosen)} example(s) as in {args.readme}", file=sys.stderr)
        return 1 if diffs else 0
    changed = rewrite(args.readme, {e.name: results[e.name] for e in chosen})
    print(f"rewrote {', '.join(changed)} in {args.readme}" if changed else f"{args.readme} is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
