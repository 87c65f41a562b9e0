"""How much the library says while it works: progress bars on stderr, and log lines.

Messages (progress lines, warnings, details) go through the standard logger ``onnx_dc``
(each module logs to its child ``onnx_dc.<module>``); the package adds only a NullHandler,
so what is shown is the application's choice. The command line shows them on stderr through
tqdm, so that a bar being drawn is not broken by them. Errors are not messages: they are raised.

Bars follow one process-wide level (quiet, normal, verbose) that the command line sets
together with the logger's level: they are drawn with tqdm, and only when stderr is a
terminal and the level is not quiet. Off a terminal (output piped or logged) the same work
shows as a plain line every :data:`PLAIN_INTERVAL` seconds, logged to ``onnx_dc.progress``
(INFO), free of carriage returns and escape codes.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a bar is drawn: a command that draws none (--version, --help) skips it
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


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        unit_scale: bool = False) -> tqdm | Lines:
    """A tqdm bar on stderr, or, when bars are not shown, :class:`Lines` (plain lines now and then).

    Either way the result iterates like ``iterable`` and takes ``update`` / ``set_postfix``,
    so callers need no branch. The bar disappears when done (``leave=False``): what a
    command prints afterwards is its result, not a trail of finished bars. ``unit_scale``
    shows counts with k / M prefixes (the bytes of a download).
    """
    if not bars_shown():
        return Lines(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=False, file=sys.stderr,
                dynamic_ncols=True)


PLAIN_INTERVAL = 10.0  # seconds between two progress lines off a terminal
INTERVAL_VARIABLE = "ONNX_DC_PROGRESS_INTERVAL"  # sets another interval (seconds, >= 0)


def plain_interval() -> float:
    """Seconds between two progress lines: ``ONNX_DC_PROGRESS_INTERVAL`` when it is a number >= 0, else
    :data:`PLAIN_INTERVAL`."""
    try:
        value = float(os.environ.get(INTERVAL_VARIABLE, PLAIN_INTERVAL))
    except ValueError:
        return PLAIN_INTERVAL
    return value if value >= 0 else PLAIN_INTERVAL  # also NaN


class Lines:
    """Progress where no bar is drawn: a plain line at most every :func:`plain_interval` seconds.

    The line goes to the ``onnx_dc.progress`` logger (INFO), e.g.
    ``retrain 1: 1200/3000 steps, 12 s, about 18 s left (epoch 1/3, loss 0.0312)``; under
    --quiet, or when made within :func:`quieted`, none. It takes what callers use of a tqdm
    bar: iteration, ``update``, ``set_postfix``, ``close`` and ``with``.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", unit_scale: bool = False):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:  # a generator: no total
                total = None
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.shown = _level > Level.QUIET
        self.interval = plain_interval()
        self.n = 0
        self.postfix: dict[str, object] = {}
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """``n`` more done; a line when the interval has passed since the last one (or the start)."""
        self.n += n
        if not self.shown:
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            _lines_log.info("%s", self.line(now - self.start))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        """Values shown at the end of the next line (tqdm's signature; ``refresh`` has no use here)."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        """Nothing to clear: the lines stay where they are."""

    def line(self, elapsed: float) -> str:
        """The progress line after ``elapsed`` seconds."""
        count = f"{self._count(self.n)}/{self._count(self.total)}" if self.total else self._count(self.n)
        text = f"{self.desc or 'progress'}: {count} {self._units()}, {elapsed:.0f} s"
        if self.total and 0 < self.n < self.total:
            text += f", about {elapsed * (self.total - self.n) / self.n:.0f} s left"
        if self.postfix:
            text += " (" + ", ".join(f"{k} {v}" for k, v in self.postfix.items()) + ")"
        return text

    def _count(self, n: float) -> str:
        if not self.unit_scale or abs(n) < 1000:
            return f"{n:g}"
        for prefix in "kMGT":
            n /= 1000
            if abs(n) < 1000:
                break
        return f"{n:.1f}{prefix}"

    def _units(self) -> str:
        unit = self.unit
        if not (unit.isalpha() and unit.islower() and len(unit) > 2):  # "B", "it"
            return unit
        return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


LOGGER = "onnx_dc"
_lines_log = logging.getLogger(LOGGER + ".progress")
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
