"""The ``onnx-dc`` command line: thin argument parsing over the Python API.

One module per command group (:mod:`~onnx_dc.cli.compress`: commands that write a model;
:mod:`~onnx_dc.cli.files`: commands that read one; :mod:`~onnx_dc.cli.analysis`: sensitivity,
plot, ``--target-drop``), argument groups shared through :mod:`~onnx_dc.cli.args`, checks that
run before any work in :mod:`~onnx_dc.cli.argcheck`. User errors
(:class:`onnx_dc.errors.OnnxDcError`) become one line on stderr and exit code 2, with no traceback.
Any other exception is a bug (in onnx-dc, or an unexpected failure of a library it calls): one
line names it and the place in onnx_dc it went through, exit code 1; ``--debug`` shows the traceback.

Messages of the library (the ``onnx_dc`` logger) are printed on stderr as plain lines while a
command runs: INFO and above by default, errors only with ``--quiet``, DEBUG too with ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from onnx_dc import progress
from onnx_dc.errors import OnnxDcError

EXIT_BUG = 1
EXIT_USER_ERROR = 2
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Commands added from outside the package: each is called with the subparsers action.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``onnx-dc``."""
    from onnx_dc.cli import analysis, compress, files
    from onnx_dc.cli.args import add_common_args
    from onnx_dc.cli.parser import CommandParser

    parser = CommandParser(prog="onnx-dc", description="Deep Compression for ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (compress, files, analysis):
        group.add_parsers(sub)
    for extra in EXTRA_COMMANDS:
        extra(sub)
    add_common_args(parser, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``onnx-dc``; returns the exit code."""
    args = build_parser().parse_args(argv)
    with shown_on_stderr(args.level):
        try:
            return args.func(args)
        except OnnxDcError as exc:
            print(f"onnx-dc: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
            sys.stderr.close()
            return 0
        except Exception as exc:  # not a user error: a bug, shown as one (never as a user error)
            if args.debug:
                traceback.print_exc(file=sys.stderr)
                print("onnx-dc: bug: this is a bug in onnx-dc, please report it with the command line you ran and "
                      "the traceback above", file=sys.stderr)
            else:
                print(bug_line(exc), file=sys.stderr)
            return EXIT_BUG


class _TqdmHandler(logging.Handler):
    """Prints each message as a plain line on stderr through tqdm: a bar being drawn is redrawn below it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)  # the stderr of the moment (tests replace it)
        except Exception:  # the logging convention: a failing handler reports itself, the caller goes on
            self.handleError(record)


@contextlib.contextmanager
def shown_on_stderr(level: progress.Level):
    """What a command shows on stderr (--quiet / --verbose), set in this one place and undone on return.

    The progress bars follow ``level``; the ``onnx_dc`` logger gets the matching logging level
    and a handler that prints its messages as plain lines. The logger does not propagate
    meanwhile: onnxruntime's tools give the root logger a stderr handler when imported, which
    would print every line a second time. ``main()`` may run many times in one process (tests),
    so the logger is left as it was found.
    """
    progress.set_level(level)
    try:
        with progress.attached(_TqdmHandler(), progress.LOG_LEVELS[level], propagate=False):
            yield
    finally:
        progress.set_level(progress.Level.NORMAL)


def bug_line(exc: BaseException) -> str:
    """One line for an unexpected exception: its type, message, the innermost place in onnx_dc it went through,
    and what to do."""
    kind = type(exc).__qualname__
    if type(exc).__module__ != "builtins":
        kind = f"{type(exc).__module__}.{kind}"
    message = " ".join(str(exc).split())
    return (f"onnx-dc: bug: {kind}{': ' + message if message else ''} (at {_own_place(exc)}); this is a bug in "
            "onnx-dc, please report it with the command line you ran (--debug shows the traceback)")


def _own_place(exc: BaseException) -> str:
    """``onnx_dc/module.py:line in function`` of the innermost frame of ``exc``'s traceback inside the package."""
    place = "an unknown place"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(PACKAGE_DIR):
            place = f"{path.relative_to(PACKAGE_DIR.parent).as_posix()}:{frame.lineno} in {frame.name}"
    return place
