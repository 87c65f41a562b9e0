"""Typed validation of a settings section: one declaration of its fields, one way to check it.

A section (the config's ``defaults`` / ``nodes`` settings, ``calib:``, ``train:``, the
calibration options) is declared as a :class:`Section` of :class:`Field` s. Checking a raw
mapping against it gives the converted values of the keys present (defaults stay in the
settings dataclasses, because configs are merged layer by layer from partial mappings):

* a key not declared is an error;
* ``bool`` takes true / false only; ``int`` an integer (not a bool); ``float`` any finite
  number, stored as float; both within the declared limits;
* a str-Enum or a tuple of choices is matched case-insensitively and stored as the
  canonical member or choice (``"KMeans++"`` -> ``CentroidInit.KMEANS_PP``);
* ``optional`` fields also take null (and the ``none_words``, e.g. ``auto``), stored as None;
* a nested :class:`Section` takes a mapping checked the same way; a function takes the raw
  value and returns it converted, or raises ``ValueError("must be ...")`` (a small grammar).

Every problem names the section and the key (``defaults: class_num: 300 must be an integer
in 2..256``) and all of them are reported at once, in one error.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from onnx_dc.errors import ConfigError, OnnxDcError


@dataclass(frozen=True)
class Field:
    """One setting of a section.

    Attributes:
        name: the key.
        kind: ``bool``, ``int``, ``float``, a str-Enum class, a tuple of str choices, a nested
            :class:`Section`, or a function ``value -> converted`` raising ``ValueError(why)``.
        low: smallest allowed number (int / float kinds), None for no limit.
        high: largest allowed number, None for no limit.
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
        optional: null is allowed and stands for "not set" (None).
        none_words: words that also mean None, e.g. ``("auto",)``; they imply ``optional``.
        note: said in parentheses after the expected value, e.g. the unit.
    """

    name: str
    kind: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    none_words: tuple[str, ...] = ()
    note: str = ""

    def expected(self) -> str:
        """What the value must be, as said in messages: ``an integer in 2..256``."""
        text = _describe_kind(self)
        if self.optional or self.none_words:
            text += " or " + " or ".join(self.none_words or ("null",))
        return f"{text} ({self.note})" if self.note else text

    def convert(self, value: Any) -> Any:
        """The checked and converted value.

        Raises:
            ValueError: ``must be ...`` when the value does not fit the declaration.
        """
        if (self.optional or self.none_words) and (
                value is None or (isinstance(value, str) and value.lower() in self.none_words)):
            return None
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is int or kind is float:
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if is_number and (kind is float or isinstance(value, int)) and math.isfinite(value) \
                    and self._within(value):
                return float(value) if kind is float else value
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            if isinstance(value, kind):
                return value
            member = _by_lower_value(kind).get(value.lower()) if isinstance(value, str) else None
            if member is not None:
                return member
        elif isinstance(kind, tuple):
            choice = {c.lower(): c for c in kind}.get(value.lower()) if isinstance(value, str) else None
            if choice is not None:
                return choice
        elif callable(kind):
            return kind(value)
        else:
            raise TypeError(f"field {self.name!r}: kind {kind!r} is not a declarable kind")
        raise ValueError(f"must be {self.expected()}")

    def _within(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


class Section:
    """The declared fields of one settings section."""

    def __init__(self, *fields: Field) -> None:
        self.fields = {f.name: f for f in fields}

    @property
    def names(self) -> tuple[str, ...]:
        """The known keys, in declaration order."""
        return tuple(self.fields)

    def check(self, raw: Any, where: str, problems: list[str], prefix: str = "") -> dict[str, Any]:
        """Convert the keys present in ``raw``; append one message per problem instead of raising.

        Args:
            raw: the mapping as given (YAML, flags or API arguments); None counts as empty.
            where: the section (and file) named at the start of each message, e.g. ``dc.yaml: train``.
            problems: messages are appended here.
            prefix: put before each key in messages (``codebook.`` for a nested section).

        Returns:
            Key -> converted value, for the valid keys present (nested sections as dicts).
        """
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: {prefix.rstrip('.') + ': ' if prefix else ''}"
                            f"expected a mapping of settings, got {type(raw).__name__}")
            return {}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            key = str(key)
            spec = self.fields.get(key)
            if spec is None:
                problems.append(f"{where}: unknown setting {prefix + key!r} (known: {', '.join(self.names)})")
            elif isinstance(spec.kind, Section):
                inner = spec.kind.check(value, where, problems, f"{prefix}{key}.")
                if value is None or isinstance(value, Mapping):
                    out[key] = inner
            else:
                try:
                    out[key] = spec.convert(value)
                except ValueError as exc:
                    problems.append(f"{where}: {prefix}{key}: {value!r} {exc}")
        return out

    def parse(self, raw: Any, where: str, error: type[OnnxDcError] = ConfigError) -> dict[str, Any]:
        """:meth:`check` ``raw`` and raise one ``error`` listing every problem, if any."""
        problems: list[str] = []
        out = self.check(raw, where, problems)
        if problems:
            raise error("; ".join(problems))
        return out


def _by_lower_value(kind: type[enum.Enum]) -> dict[str, enum.Enum]:
    return {str(m.value).lower(): m for m in kind}


def _describe_kind(f: Field) -> str:
    kind = f.kind
    if kind is bool:
        return "true or false"
    if kind is int:
        return _describe_range(f, "an integer", "a positive integer", "a non-negative integer", str)
    if kind is float:
        return _describe_range(f, "a number", "a positive number", "a non-negative number", lambda x: f"{x:g}")
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in kind)
    if isinstance(kind, tuple):
        return "one of " + ", ".join(kind)
    if isinstance(kind, Section):
        return "a mapping of settings"
    return "valid"


def _describe_range(f: Field, noun: str, positive: str, non_negative: str, fmt: Callable[[Any], str]) -> str:
    lo, hi = f.low, f.high
    if lo is not None and hi is not None:
        if noun == "an integer" and not f.low_open and not f.high_open:
            return f"an integer in {fmt(lo)}..{fmt(hi)}"
        return f"{noun} in {'(' if f.low_open else '['}{fmt(lo)}, {fmt(hi)}{')' if f.high_open else ']'}"
    if lo is not None:
        if lo == 0:
            return positive if f.low_open else non_negative
        if lo == 1 and noun == "an integer" and not f.low_open:
            return positive
        return f"{noun} {'>' if f.low_open else '>='} {fmt(lo)}"
    if hi is not None:
        return f"{noun} {'<' if f.high_open else '<='} {fmt(hi)}"
    return noun
