"""Checks of command-line arguments that run before any work, one function per kind of argument.

A command checks everything it can (input and output paths, data specs, configs, numbers,
shapes) before it loads a model or trains, so that a typo costs a second, not an epoch.
Each function raises a typed error whose one-line message names the flag and says what to
do, and returns the checked (parsed) value. The API checks the same things later; these
only move the failure to the front.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable

from onnx_dc.errors import ArgumentError, ModelError


def input_file(path: str | os.PathLike, flag: str | None = None) -> Path:
    """An existing, readable file (not a folder); ``flag`` names the option it was given to."""
    p = Path(path)
    where = f" ({flag})" if flag else ""
    if p.is_dir():
        raise ModelError(f"{p}: is a folder, not a file{where}")
    if not p.is_file():
        raise ModelError(f"{p}: no such file{where}")
    if not os.access(p, os.R_OK):
        raise ModelError(f"{p}: not readable{where}")
    return p


def unpacked_model(path: str | os.PathLike, flag: str | None = None) -> Path:
    """An existing file that is not a packed ``.dcz`` (commands that edit the graph need the ONNX)."""
    from onnx_dc.formats import is_dcz

    p = input_file(path, flag)
    if is_dcz(p):
        raise ModelError(f"{p}: a packed .dcz (already compressed); compress the original .onnx, or restore "
                         f"the .dc.onnx first: onnx-dc unpack {p} -o {p.with_suffix('.dc.onnx').name}")
    return p


def output_file(path: str | os.PathLike, flag: str = "-o", inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """A file path that can be written: not a folder, in an existing writable folder, not an input."""
    from onnx_dc.graph.io import check_output

    return check_output(path, flag, inputs)


def data_spec(text: str, flag: str = "--data", split: str = "test"):
    """A data spec whose folder or file is there (``mnist:DIR``, ``npz:FILE``, ``digits``, ...)."""
    from onnx_dc.data.datasets import check_data_spec
    from onnx_dc.errors import DataError

    try:
        return check_data_spec(text, split)
    except DataError as err:
        raise DataError(f"{flag}: {err}") from None


def config_file(path: str | os.PathLike, flag: str = "--config"):
    """A readable, valid YAML config (keys and values checked; patterns are checked against the model later)."""
    from onnx_dc.config import load_config

    input_file(path, flag)
    return load_config(path)


def count(value: int | None, flag: str, minimum: int = 1) -> int | None:
    """An integer flag that must be at least ``minimum`` (None: not given)."""
    if value is not None and value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ArgumentError(f"{flag} {value}: give {what}")
    return value


def scale(value: float | None, flag: str = "--scale") -> float | None:
    """A positive pixel multiplier (0 makes every input the same, a negative one inverts it); None: not given."""
    if value is not None and not value > 0:
        raise ArgumentError(f"{flag} {value:g}: give a positive pixel multiplier (e.g. 0.00392157 for pixels / 255)")
    return value


def shape(text: str | None, flag: str = "--input-shape") -> tuple[int, ...] | None:
    """A per-sample shape such as ``1,28,28`` (no batch dimension); None when not given."""
    if text is None:
        return None
    parts = [d.strip() for d in text.split(",")]
    if not all(d.isdigit() and int(d) > 0 for d in parts):
        raise ArgumentError(f"{flag} {text!r}: give positive integers separated by commas, like 1,28,28 "
                            "(channels, height, width; no batch dimension)")
    return tuple(int(d) for d in parts)


def ratio_list(text: str | None, flag: str = "--ratios") -> tuple[float, ...] | None:
    """Comma-separated sparse ratios, each in [0, 1), at least one (None: not given)."""
    from onnx_dc.sweep_grid import parse_ratios

    return None if text is None else parse_ratios(text, flag)


def codebook(text: str) -> str:
    """An argparse ``type``: one codebook setting (layer, channel, group:G), as written in configs."""
    from onnx_dc.config import parse_codebook

    try:
        kind, rows = parse_codebook(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    return kind.value if rows is None else f"{kind.value}:{rows}"


def codebook_list(text: str | None, flag: str = "--codebooks") -> tuple[str, ...] | None:
    """Comma-separated codebook settings (layer, channel, group:G), at least one (None: not given)."""
    from onnx_dc.sweep_grid import parse_codebooks

    return None if text is None else parse_codebooks(text, flag)


def class_num_list(text: str | None, flag: str = "--class-nums") -> tuple[int, ...] | None:
    """Comma-separated class_num values, each in 2..256, at least one (None: not given)."""
    from onnx_dc.sweep_grid import parse_class_nums

    return None if text is None else parse_class_nums(text, flag)


def drop(value: float | None, flag: str) -> float | None:
    """A non-negative loss of score (points of accuracy, ...); None: not given."""
    if value is not None and not value >= 0:
        raise ArgumentError(f"{flag} {value}: give a drop >= 0 (points of the score, e.g. 0.5 for half a point)")
    return value


def ray_address(address: str | None) -> str | None:
    """Ray installed, and a cluster answering at ``address`` within seconds (``local``: a new local instance)."""
    from onnx_dc.analysis.sweep import check_ray_address, ray_module

    if address is not None:
        ray_module()
        check_ray_address(address)
    return address


def plotting() -> None:
    """matplotlib importable (the ``plot`` extra)."""
    from onnx_dc.analysis.plots import pyplot

    pyplot()
