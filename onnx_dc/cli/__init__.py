"""The ``onnx-dc`` command line: thin argument parsing over the Python API.

One module per command group (:mod:`~onnx_dc.cli.compress`: commands that write a model;
:mod:`~onnx_dc.cli.files`: commands that read one; :mod:`~onnx_dc.cli.analysis`: sensitivity,
plot, ``--target-drop``), argument groups shared through :mod:`~onnx_dc.cli.args`, checks that
run before any work in :mod:`~onnx_dc.cli.argcheck`. User errors
(:class:`onnx_dc.errors.OnnxDcError`) become one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from onnx_dc import progress
from onnx_dc.errors import OnnxDcError

EXIT_USER_ERROR = 2
# Commands added from outside the package: each is called with the subparsers action.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``onnx-dc``."""
    from onnx_dc.cli import analysis, compress, files
    from onnx_dc.cli.args import add_common_args

    parser = argparse.ArgumentParser(prog="onnx-dc", description="Deep Compression for ONNX models.")
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
    progress.set_level(args.level)
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
    finally:
        progress.set_level(progress.Level.NORMAL)  # main() may be called again in the same process (tests)
