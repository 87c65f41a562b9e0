"""The argument parser class of ``onnx-dc``: help that shows the defaults, and a mistyped option answered by
its subcommand.

argparse leaves an option a subcommand does not know to the top-level parser, which prints
the top-level usage; here the subcommand's own usage is printed instead, with the closest
option it has (``did you mean --sparse-ratio?``), exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default value the help does not state.

    Not for flags (``--json``), nor for options whose default is None (not given: the
    help says what then happens).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or not action.option_strings or "default" in text):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`HelpFormatter`; its subcommands are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            owner = self._subcommand(parsed) or self
            owner.error(unrecognized(extra, owner))
        return parsed

    def _subcommand(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        """The parser of the subcommand that ran, if any."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                return action.choices.get(chosen) if chosen is not None else None
        return None


def unrecognized(extra: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for arguments ``parser`` does not take, with the closest options it has."""
    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    hints = []
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append((word.split("=", 1)[0], close[0]))
    text = f"unrecognized arguments: {' '.join(extra)}"
    if len(hints) == 1:
        return f"{text} (did you mean {hints[0][1]}?)"
    if hints:
        return f"{text} (did you mean {', '.join(f'{right} for {wrong}' for wrong, right in hints)}?)"
    return text
