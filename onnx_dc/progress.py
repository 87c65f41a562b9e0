"""How much the library says while it works: progress bars on stderr, and log lines.

Messages (progress lines, warnings, details) go through the standard logger ``onnx_dc``
(each module logs to its child ``onnx_dc.<module>``); the package adds only a NullHandler,
so what is shown is the application's choice. The command line shows them on stderr through
tqdm, so that a bar being drawn is not broken by them. Errors are not messages: they are raised.

Bars follow one process-wide level (quiet, normal, verbose) that the command line sets
together with the logger's level: they are drawn with tqdm, and only when stderr is a
terminal and the level is not quiet, so piped or logged output stays free of carriage returns.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sys
import threading
from collections.abc import Callable, Iterable

from tqdm import tqdm


class Level(enum.IntEnum):
    """How much to say: errors only, progress and notes, or every detail."""

    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


_level = Level.NORMAL


def set_level(level: Level) -> None:
    """Set the process-wide level of the bars (the CLI's --quiet / --verbose, set with the logger's level)."""
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


LOGGER = "onnx_dc"
# The logging level of each output level (the command line's --quiet / default / --verbose).
LOG_LEVELS = {Level.QUIET: logging.ERROR, Level.NORMAL: logging.INFO, Level.VERBOSE: logging.DEBUG}
# A library adds no handler that prints: the application chooses (and Python's last-resort
# printing of warnings, when no handler exists at all, stays off).
logging.getLogger(LOGGER).addHandler(logging.NullHandler())


@contextlib.contextmanager
def quieted(*, keep_bars: bool = False):
    """Within the block, no log lines below warnings, and no bars unless ``keep_bars``.

    For work whose lines would be noise: the many small runs inside a sweep (which has its
    own bar), the demo's training (which ends in a summary).
    """
    global _level
    logger = logging.getLogger(LOGGER)
    saved = _level
    if not keep_bars:
        _level = Level.QUIET
    saved_log = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        _level = saved
        logger.setLevel(saved_log)


class _Forward(logging.Handler):
    """Hands each message of one thread to a callback; and, while the logger is lowered for it (and does not
    propagate), hands on to the root logger's handlers the records they would have received anyway."""

    def __init__(self, echo: Callable[[str], None], hand_on_from: int | None):
        super().__init__(logging.INFO)
        self.echo, self.hand_on_from = echo, hand_on_from
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.echo(record.getMessage())
        if self.hand_on_from is not None and record.levelno >= self.hand_on_from:
            logging.getLogger().handle(record)


@contextlib.contextmanager
def echoed(echo: Callable[[str], None] | None):
    """Within the block, hand every ``onnx_dc`` message of this thread (INFO and above) to ``echo`` as a line.

    The logger is lowered to INFO for the block when it is set higher (the default), so the
    callback sees the progress lines whatever logging is configured; the lines below the
    former level then reach the callback only, not the application's handlers (onnxruntime's
    tools, for one, give the root logger a stderr handler when imported). None: nothing changes.
    """
    if echo is None:
        yield
        return
    logger = logging.getLogger(LOGGER)
    effective = logger.getEffectiveLevel()
    lowered = effective > logging.INFO
    handler = _Forward(echo, effective if lowered and logger.propagate else None)
    with attached(handler, logging.INFO if lowered else None, False if lowered else None):
        yield


@contextlib.contextmanager
def attached(handler: logging.Handler, level: int | None = None, propagate: bool | None = None):
    """Within the block, ``handler`` receives the ``onnx_dc`` logger's records, the logger set to ``level`` and
    ``propagate`` (None: as they are); the logger is left as it was found."""
    logger = logging.getLogger(LOGGER)
    saved_level, saved_propagate = logger.level, logger.propagate
    if level is not None:
        logger.setLevel(level)
    if propagate is not None:
        logger.propagate = propagate
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate
