"""A segmentation run split in two: compute in a worker thread, import on the main thread.

MRML is not thread-safe, so the worker only touches numpy / SimpleITK / torch; whoever owns the
main thread (the widget's QTimer, or :meth:`SegmentationJob.runHere`) polls and then calls
:meth:`SegmentationJob.finish`, which does the MRML import. No Qt here, so it is testable anywhere.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[str, float], None]
Compute = Callable[[ProgressCallback, Callable[[], bool]], Any]
Finish = Callable[[Any], Any]


class SegmentationJob:
    """One run: ``compute(progress, isCancelled) -> result`` then ``finish(result) -> output``."""

    def __init__(self, compute: Compute, finish: Finish, cancel: Callable[[], bool] | None = None) -> None:
        self._compute = compute
        self._finish = finish
        self._externalCancel = cancel or (lambda: False)
        self.cancelEvent = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[str, float] = ("Waiting", 0.0)
        self._messages: list[str] = []
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.traceback: str = ""

    # -- worker side -------------------------------------------------------------------------
    def isCancelled(self) -> bool:
        return self.cancelEvent.is_set() or bool(self._externalCancel())

    def _report(self, text: str, fraction: float) -> None:
        with self._lock:
            if text != self._progress[0]:
                self._messages.append(text)
            self._progress = (text, fraction)

    def _run(self) -> None:
        try:
            self.result = self._compute(self._report, self.isCancelled)
        except BaseException as exc:  # handed to the main thread by finish()
            self.error = exc
            self.traceback = traceback.format_exc()
        finally:
            self._done.set()

    # -- main-thread side --------------------------------------------------------------------
    def start(self) -> SegmentationJob:
        """Start the compute part in a daemon worker thread."""
        self._thread = threading.Thread(target=self._run, name="CLNetSegmentation", daemon=True)
        self._thread.start()
        return self

    def runHere(self, progressCallback: ProgressCallback | None = None) -> Any:
        """Compute in the calling thread (console / scripts), then :meth:`finish`."""
        def report(text: str, fraction: float) -> None:
            self._report(text, fraction)
            if progressCallback is not None:
                progressCallback(text, fraction)

        try:
            self.result = self._compute(report, self.isCancelled)
        except BaseException as exc:
            self.error = exc
            self.traceback = traceback.format_exc()
        self._done.set()
        return self.finish()

    def cancel(self) -> None:
        """Ask the worker to stop; the engine checks between tiles and raises CancelledError."""
        self.cancelEvent.set()

    def isDone(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def progress(self) -> tuple[str, float]:
        """Latest (stage text, overall fraction 0..1)."""
        with self._lock:
            return self._progress

    def takeMessages(self) -> list[str]:
        """Stage texts reported since the previous call (for a log)."""
        with self._lock:
            messages, self._messages = self._messages, []
        return messages

    def finish(self) -> Any:
        """On the main thread, once done: re-raise the worker's error, or import the result."""
        if not self._done.is_set():
            raise RuntimeError("The segmentation is still running.")
        if self.error is not None:
            raise self.error
        return self._finish(self.result)
