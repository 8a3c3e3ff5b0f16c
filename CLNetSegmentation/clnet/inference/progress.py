"""Progress reporting and cancellation shared by the CLI, Slicer and batch runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import CancelledError

ProgressCallback = Callable[[str, float], None]
"""Called with (stage text, overall fraction 0..1)."""

CancelCheck = Callable[[], bool] | threading.Event | None

# Share of the whole run each stage is expected to take (network dominates).
# "locate" is the coarse pass that runs before a subset (see locate.py); without it the bar skips its share.
STAGES = {"read": 0.02, "check": 0.01, "locate": 0.08, "prepare": 0.07, "network": 0.74, "merge": 0.08}


class Reporter:
    """Maps per-stage fractions to an overall fraction, and raises when cancel is requested."""

    def __init__(self, callback: ProgressCallback | None, cancel: CancelCheck = None) -> None:
        self.callback = callback
        if isinstance(cancel, threading.Event):
            self._cancelled = cancel.is_set
        else:
            self._cancelled = cancel or (lambda: False)
        self._order = list(STAGES)

    def check(self) -> None:
        if self._cancelled():
            raise CancelledError()

    def __call__(self, stage: str, fraction: float = 0.0, text: str | None = None) -> None:
        self.check()
        if self.callback is None:
            return
        before = sum(STAGES[s] for s in self._order[: self._order.index(stage)]) if stage in STAGES else 0.0
        overall = before + STAGES.get(stage, 0.0) * min(max(fraction, 0.0), 1.0)
        self.callback(text or stage, min(overall, 1.0))
