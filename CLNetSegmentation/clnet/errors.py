"""User-facing errors: each says what is wrong and what to do about it.

The CLI prints ``str(error)`` on one line and exits non-zero; the Slicer module shows it in a
message box. Anything that is not a :class:`ClnetError` is a bug and gets a traceback.
"""

from __future__ import annotations


class ClnetError(Exception):
    """An error the user can act on. ``hint`` says what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


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
