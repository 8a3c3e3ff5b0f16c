"""Machine-readable progress: one JSON object per line, for a parent process to read.

The Slicer module runs ``clnet`` in a worker process and reads its stdout with non-blocking reads,
so everything a job has to say goes through this one protocol. Each line is a JSON object with an
``event`` key:

- ``{"event": "progress", "stage": str, "fraction": float}``: overall fraction 0..1 (training adds
  ``step``, ``steps``, ``loss``, ``eta_s`` and, when it validates, ``validation_dice``; readers must
  accept progress events with or without such extra keys);
- ``{"event": "message", "text": str}``: something for the user's log (a warning, a note);
- ``{"event": "result", ...}``: what the job produced (paths, names), sent once at the end;
- ``{"event": "error", "type": str, "message": str, "hint": str | None, "exit_code": int}``: the job
  failed; ``type`` is the error class (``InputError``, ``CancelledError``, ...), so the reader can
  tell a cancel from a failure without parsing text.

Nothing else is written to stdout in this mode (tqdm, notes and warnings go elsewhere or become
``message`` events), so a reader may treat any non-JSON line as noise.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

from .errors import ClnetError

PROTOCOL = "clnet-events/1"
"""Sent as the first line (``{"event": "hello", "protocol": ...}``) so a reader can check it."""


class EventWriter:
    """Writes events to ``stream`` (default: stdout), one flushed line each."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._last: tuple[str, float] | None = None

    def emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.stream.flush()

    def hello(self, **fields: Any) -> None:
        self.emit("hello", protocol=PROTOCOL, **fields)

    def progress(self, stage: str, fraction: float, **fields: Any) -> None:
        """A ``ProgressCallback``; repeats of the same (stage, percent) are dropped unless they carry
        extra fields (``step``, ``loss``, ``eta_s``, ``validation_dice``, ...), which are sent as they are."""
        key = (stage, round(float(fraction), 3))
        if key != self._last or fields:
            self._last = key
            self.emit("progress", stage=stage, fraction=key[1], **fields)

    def message(self, text: str) -> None:
        self.emit("message", text=text)

    def result(self, **fields: Any) -> None:
        self.emit("result", **fields)

    def error(self, exc: BaseException, exit_code: int | None = None) -> None:
        if isinstance(exc, ClnetError):
            self.emit("error", type=type(exc).__name__, message=exc.message, hint=exc.hint,
                      exit_code=exc.exit_code if exit_code is None else exit_code)
        else:
            self.emit("error", type=type(exc).__name__, message=str(exc) or repr(exc), hint=None,
                      exit_code=1 if exit_code is None else exit_code)


def parse_event(line: str | bytes) -> dict | None:
    """The event on one line, or None for a line that is not an event (noise from a library)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("event"), str) else None


ProgressCallback = Callable[[str, float], None]
