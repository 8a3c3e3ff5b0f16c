"""User-facing errors: each says what is wrong and what to do about it.

The CLI prints ``str(error)`` on one line and exits non-zero; the Slicer module shows it in a
message box. Anything that is not a :class:`ClnetError` is a bug and gets a traceback.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Caller = Literal["python", "cli"]


@dataclass(frozen=True)
class Setting:
    """One option as each kind of caller spells it: ``--force`` on the command line, ``force=True`` in Python.

    A message names it as ``{force}`` and passes ``settings={"force": FORCE}``; the error is worded
    for Python callers, and :meth:`ClnetError.for_caller` rewords it for the command line.
    """

    cli: str
    python: str

    def spelled(self, caller: Caller) -> str:
        return f"`{self.cli if caller == 'cli' else self.python}`"


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _word(text: str | None, settings: Mapping[str, Setting], caller: Caller) -> str | None:
    if text is None or not settings:
        return text
    # Only known names are replaced, so braces in paths or values pass through untouched.
    return _PLACEHOLDER.sub(lambda m: settings[m[1]].spelled(caller) if m[1] in settings else m[0], text)


class ClnetError(Exception):
    """An error the user can act on. ``hint`` says what to do.

    ``settings`` names the options the text refers to as ``{name}`` placeholders (see :class:`Setting`).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, settings: Mapping[str, Setting] | None = None) -> None:
        self.settings = dict(settings or {})
        self._template = (message, hint)
        self.message = _word(message, self.settings, "python") or ""
        self.hint = _word(hint, self.settings, "python")
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def for_caller(self, caller: Caller) -> ClnetError:
        """This error with its options spelled the way ``caller`` spells them (a copy when they differ)."""
        if not self.settings:
            return self
        other = copy.copy(self)
        other.message = _word(self._template[0], self.settings, caller) or ""
        other.hint = _word(self._template[1], self.settings, caller)
        other.args = (other.message,)
        return other


class InputError(ClnetError):
    """The input image cannot be used (missing, unreadable, not a CT, bad geometry...)."""


class ModelError(ClnetError):
    """A model directory is missing, incomplete, tampered with or incompatible."""


class OutputError(ClnetError):
    """The output location cannot be written."""


class CancelledError(ClnetError):
    """The user cancelled the run; nothing was written."""

    exit_code = 130

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
