"""How much the library says while it works: progress bars and notes on stderr.

One process-wide level (quiet, normal, verbose) set by the command line. Bars are drawn
with tqdm, and only when stderr is a terminal and the level is not quiet: piped or logged
output stays free of carriage returns. Notes (warnings and informational lines) go to
stderr unless the level is quiet; they are written through tqdm so that a bar being
drawn is not broken by them. Errors are not notes: they are raised.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterable

from tqdm import tqdm


class Level(enum.IntEnum):
    """How much to say: errors only, progress and notes, or every detail."""

    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


_level = Level.NORMAL


def set_level(level: Level) -> None:
    """Set the process-wide level (the CLI's --quiet / --verbose)."""
    global _level
    _level = Level(level)


def level() -> Level:
    """The current level."""
    return _level


def verbose() -> bool:
    """True when every detail is asked for (--verbose)."""
    return _level >= Level.VERBOSE


def bars_shown() -> bool:
    """True when progress bars are drawn: not quiet, and stderr is a terminal."""
    try:
        return _level > Level.QUIET and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A tqdm bar on stderr, or tqdm's own no-op stand-in when bars are not shown.

    Either way the result iterates like ``iterable`` and takes ``update`` / ``set_postfix``,
    so callers need no branch. The bar disappears when done (``leave=False``): what a
    command prints afterwards is its result, not a trail of finished bars.
    """
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not bars_shown(), dynamic_ncols=True)


def note(line: str) -> None:
    """Print an informational line or warning on stderr, unless quiet."""
    if _level > Level.QUIET:
        tqdm.write(line, file=sys.stderr)


@contextlib.contextmanager
def quieted():
    """Within the block, no bars or notes (the many small runs inside a sweep, which has its own bar)."""
    global _level
    saved, _level = _level, Level.QUIET
    try:
        yield
    finally:
        _level = saved
