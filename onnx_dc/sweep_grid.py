"""The grid of a sensitivity sweep: the default sparse ratios and class_num values, and the parsers
of such lists (``--ratios 0.5,0.9``, ``--class-nums 256,32``, ``--codebooks layer,group:8``) shared by the
CLI's checks and the analysis; the grammar of one codebook setting (``layer``, ``channel``, ``group:G``),
which the config's ``codebook`` key and the report's K column use too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from onnx_dc.errors import ArgumentError

DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_CLASS_NUMS = (256, 64, 32, 16)
DEFAULT_CODEBOOKS = ("layer",)
CODEBOOKS = ("layer", "channel")  # the codebook settings a sweep may try besides group:G (onnx_dc.config.Codebook)
GROUP = "group"  # ``group:G``: a codebook per G output channels
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


def split_codebook(text: object) -> tuple[str, int | None]:
    """A codebook setting's text as ``(kind, G)``: ``layer`` / ``channel`` / ``group`` with G None, or ``group:G``.

    Raises:
        ValueError: ``must be ...`` (the config's wording) for anything else.
    """
    kind, _, rows = text.strip().lower().partition(":") if isinstance(text, str) else ("", "", "")
    if kind in CODEBOOKS + (GROUP,) and not rows:
        return kind, None
    if kind == GROUP and rows.isdigit() and int(rows) >= 1:
        return kind, int(rows)
    raise ValueError("must be layer, channel, group or group:G with G >= 1 (output channels per codebook)")


def codebook_marker(text: str) -> str:
    """The mark of a codebook setting after class_num in tables: ``/ch``, ``/gG``, nothing for ``layer``."""
    kind, rows = split_codebook(text)
    return {"layer": "", "channel": "/ch"}.get(kind, f"/g{rows}")


def parse_codebooks(text: str | Sequence[str], flag: str = "--codebooks") -> tuple[str, ...]:
    """codebook settings (layer, channel, group:G), at least one; layer, channel, then the groups from the
    most channels per codebook to the fewest, without repeats."""
    items = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    parsed, bad = [], []
    for item in items:
        try:
            kind, rows = split_codebook(item)
        except ValueError:
            bad.append(item)
            continue
        if kind != GROUP or rows is not None:
            parsed.append((kind, rows))
        else:
            bad.append(item)  # a sweep's group names its G
    if not items or bad:
        raise ArgumentError(f"{flag}: {bad[0] if bad else 'empty list'!r} is not a codebook setting; give "
                            f"comma-separated values among {','.join(CODEBOOKS)},group:G (G output channels "
                            "per codebook, e.g. group:8)")
    groups = sorted({rows for kind, rows in parsed if kind == GROUP}, reverse=True)
    return tuple(c for c in CODEBOOKS if (c, None) in parsed) + tuple(f"{GROUP}:{g}" for g in groups)


def _numbers(text: str | Sequence, flag: str, kind: type) -> list:
    items = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    if not items:
        raise ArgumentError(f"{flag}: empty list; give comma-separated values, like "
                            f"{'0.5,0.9' if kind is float else '256,32'}")
    try:
        return [kind(v) for v in items]
    except (TypeError, ValueError):
        raise ArgumentError(f"{flag} {text!r}: give comma-separated {'numbers' if kind is float else 'integers'}") from None
