"""The grid of a sensitivity sweep: the default sparse ratios and class_num values, and the parsers
of such lists (``--ratios 0.5,0.9``, ``--class-nums 256,32``) shared by the CLI's checks and the
analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from onnx_dc.errors import ArgumentError

DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_CLASS_NUMS = (256, 64, 32, 16)
DEFAULT_CODEBOOKS = ("layer",)
CODEBOOKS = ("layer", "channel")  # the codebook settings a sweep may try besides group:G (onnx_dc.config.Codebook)
DEFAULT_MAX_DROP = 1.0  # points of the score a suggested per-layer setting may lose


def parse_ratios(text: str | Sequence[float], flag: str = "--ratios") -> tuple[float, ...]:
    """Sparse ratios, each in [0, 1), at least one; sorted, without repeats."""
    values = _numbers(text, flag, float)
    bad = [v for v in values if not 0.0 <= v < 1.0 or math.isnan(v)]
    if bad:
        raise ArgumentError(f"{flag}: {bad[0]:g} is outside [0, 1); give fractions pruned, like 0.5,0.9")
    return tuple(sorted(set(values)))


def parse_class_nums(text: str | Sequence[int], flag: str = "--class-nums") -> tuple[int, ...]:
    """class_num values, each in 2..256; sorted from most to fewest values, without repeats."""
    values = _numbers(text, flag, int)
    bad = [v for v in values if not 2 <= v <= 256]
    if bad:
        raise ArgumentError(f"{flag}: {bad[0]} is outside 2..256; give numbers of shared values, like 256,32,16")
    return tuple(sorted(set(values), reverse=True))


def parse_codebooks(text: str | Sequence[str], flag: str = "--codebooks") -> tuple[str, ...]:
    """codebook settings (layer, channel, group:G), at least one; layer, channel, then the groups from the
    most channels per codebook to the fewest, without repeats."""
    items = [p.strip().lower() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    groups = {int(v[6:]) for v in items if v.startswith("group:") and v[6:].isdigit() and int(v[6:]) >= 1}
    bad = [v for v in items if v not in CODEBOOKS and not (v.startswith("group:") and v[6:].isdigit() and int(v[6:]) >= 1)]
    if not items or bad:
        raise ArgumentError(f"{flag}: {bad[0] if bad else 'empty list'!r} is not a codebook setting; give "
                            f"comma-separated values among {','.join(CODEBOOKS)},group:G (G output channels "
                            "per codebook, e.g. group:8)")
    return tuple(c for c in CODEBOOKS if c in items) + tuple(f"group:{g}" for g in sorted(groups, reverse=True))


def _numbers(text: str | Sequence, flag: str, kind: type) -> list:
    items = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    if not items:
        raise ArgumentError(f"{flag}: empty list; give comma-separated values, like "
                            f"{'0.5,0.9' if kind is float else '256,32'}")
    try:
        return [kind(v) for v in items]
    except (TypeError, ValueError):
        raise ArgumentError(f"{flag} {text!r}: give comma-separated {'numbers' if kind is float else 'integers'}") from None
