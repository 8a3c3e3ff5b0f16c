"""Run a ``clnet`` command in a worker process and follow it from the main thread, without threads.

Why a process: Slicer and CTK never release the GIL while the Qt event loop idles, so a Python
thread inside Slicer advances only while the main thread happens to run Python. A child process
has its own interpreter and runs at full speed whatever Slicer's main thread does.

How it is followed: the child is ``python -m clnet.worker ARGS --progress json`` (the CLI itself,
see ``clnet/worker.py``). Its stdout, one JSON event per line (``clnet/events.py``), goes to
``events.jsonl`` and its stderr to ``worker.log``, both in the job's own temporary folder. The main
thread reads whatever the child appended since the last look (:meth:`ProcessJob.poll`, called from a
``QTimer`` in the widget or a sleep loop in scripts). Reads of a regular file never block on any
OS, so the same code runs on Linux, macOS and Windows (a Windows pipe cannot be made non-blocking),
and neither stream can fill a pipe buffer and stall the child.

Cancel and parent death: the job holds the write end of the child's stdin and never writes to it.
Cancel closes it and ends the child's process tree (the ``PythonSlicer`` launcher and the Python it
started), then kills it if it is still there after a grace period. If Slicer itself dies, the OS
closes the pipe and the worker exits by itself.

Nothing here imports Qt, MRML or torch, so it is tested in plain Python.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clnet.errors import CancelledError

from .worker_errors import WorkerError, errorFromEvent, failureFromExit

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker.log"
GRACE_SECONDS = 3.0
"""After Cancel, how long the worker may take to stop before it is killed."""

ProgressCallback = Callable[[str, float], None]


def pythonExecutable() -> str:
    """Slicer's own Python (``PythonSlicer``) inside Slicer; this interpreter elsewhere."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is None:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = Path(app.slicerHome) / "bin" / name
    if candidate.is_file():
        return str(candidate)
    raise WorkerError("Cannot find Slicer's Python interpreter (PythonSlicer).",
                      "Reinstall 3D Slicer; PythonSlicer should be in its bin folder.")


def engineRoot() -> Path:
    """The folder that holds the ``clnet`` package this process would import (the module folder
    in an installed extension, where clnet is copied beside the module, not pip-installed)."""
    spec = importlib.util.find_spec("clnet")
    if spec is None or not spec.origin:
        raise WorkerError("The clnet engine package is missing next to the CLNet Segmentation module.",
                          "Reinstall the CLNetExtension.")
    return Path(spec.origin).resolve().parent.parent


def workerEnvironment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with the engine's folder first on the child's PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(engineRoot())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _startOptions() -> dict:
    """Put the child in its own process group / session, so the whole tree can be ended."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def endProcessTree(process: subprocess.Popen, force: bool) -> None:
    """Stop ``process`` and everything it started (the launcher's Python included)."""
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            # The launcher's child is another process; taskkill /T ends the whole tree.
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), check=False)
        else:
            os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError) as exc:
        log.debug("Ending the worker process tree: %s", exc)
        if force:
            process.kill()


class ProcessJob:
    """One ``clnet`` command in a worker process, followed by polling from the main thread.

    >>> job = ProcessJob(["segment", "ct.nrrd", "-o", "out"]).start()
    >>> while not job.poll(): time.sleep(0.2)    # or: from a QTimer
    >>> result = job.finish()                    # the onResult hook's value; raises on failure

    ``args`` are the clnet arguments; ``--progress json`` is appended when missing. ``onResult``
    runs in :meth:`finish` (so on the caller's thread, which must be the main thread for MRML) with
    the ``result`` event; its return value is what ``finish`` returns. The job's folder
    (:attr:`workDir`) is deleted by ``finish``/``cancel`` unless ``keepWorkDir``.
    """

    task = "segmentation"
    """What the job does, as its error messages name it ("The training process ran out of memory")."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        onResult: Callable[[dict], Any] | None = None,
        python: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        workDir: str | os.PathLike | None = None,
        keepWorkDir: bool = False,
        graceSeconds: float = GRACE_SECONDS,
        task: str | None = None,
    ) -> None:
        if task is not None:
            self.task = task
        self.args = list(args)
        if "--progress" not in self.args:
            self.args += ["--progress", "json"]
        self._onResult = onResult
        self._python = python
        self._env = env
        self.workDir = Path(workDir) if workDir is not None else Path(tempfile.mkdtemp(prefix="clnet-job-"))
        self.workDir.mkdir(parents=True, exist_ok=True)
        self.keepWorkDir = keepWorkDir
        self.graceSeconds = graceSeconds
        self._process: subprocess.Popen | None = None
        self._events = None
        self._buffer = b""
        self._progress: tuple[str, float] = ("Waiting", 0.0)
        self._stage = "Waiting"
        self.progressEvent: dict | None = None
        """The latest raw ``progress`` event (extra fields such as ``step``, ``loss``, ``eta_s``)."""
        self._messages: list[str] = []
        self._cancelAt: float | None = None
        self._done = False
        self.cancelReason: str | None = None
        self.resultEvent: dict | None = None
        self.errorEvent: dict | None = None
        self.returncode: int | None = None
        self.startedAt: float | None = None
        self.details = ""
        """The end of the worker's stderr once it is done (for a log; the folder is deleted)."""

    # -- starting ----------------------------------------------------------------------------
    def command(self) -> list[str]:
        """``python -m clnet.worker ARGS``; ``python`` may also be a list (a launcher and its options)."""
        python = self._python or pythonExecutable()
        prefix = [python] if isinstance(python, str) else list(python)
        return [*prefix, "-m", "clnet.worker", *self.args]

    def start(self) -> ProcessJob:
        """Launch the worker; raises :class:`WorkerError` when it cannot be started."""
        if self.cancelRequested:  # cancelled before it started: nothing to run
            return self
        if self._process is not None or self._done:
            raise RuntimeError("This job was already started.")
        command = self.command()
        env = dict(self._env) if self._env is not None else workerEnvironment()
        try:
            with open(self.workDir / EVENTS_FILE, "wb") as out, open(self.workDir / LOG_FILE, "wb") as err:
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                                 cwd=self.workDir, env=env, **_startOptions())
        except OSError as exc:
            self.removeWorkDir()
            raise WorkerError(f"Could not start the segmentation process ({command[0]}): {exc}.",
                              "Check that 3D Slicer's Python is installed and runnable.") from exc
        self._events = open(self.workDir / EVENTS_FILE, "rb", buffering=0)  # noqa: SIM115 (held open)
        self.startedAt = time.monotonic()
        log.debug("Started worker %s: %s", self._process.pid, command)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- following (main thread) ------------------------------------------------------------
    def poll(self) -> bool:
        """Read the events written since the last call; True once the worker has ended."""
        if self._done:
            return True
        if self._process is None:
            raise RuntimeError("The job was not started.")
        self._readEvents()
        code = self._process.poll()
        if code is None:
            if self._cancelAt is not None and time.monotonic() - self._cancelAt > self.graceSeconds:
                endProcessTree(self._process, force=True)
            return False
        self._readEvents(final=True)
        self.returncode = code
        self._close()
        return True

    def isDone(self) -> bool:
        return self.poll()

    def wait(self, timeout: float | None = None, interval: float = 0.1,
             progressCallback: ProgressCallback | None = None,
             isCancelled: Callable[[], bool] | None = None) -> bool:
        """Poll until the worker ends (True) or ``timeout`` seconds pass (False)."""
        start = time.monotonic()
        last = None
        while not self.poll():
            if isCancelled is not None and isCancelled():
                self.cancel()
            if progressCallback is not None and self._progress != last:
                last = self._progress
                progressCallback(*last)
            if timeout is not None and time.monotonic() - start > timeout:
                return False
            time.sleep(interval)
        if progressCallback is not None and self._progress != last:
            progressCallback(*self._progress)
        return True

    @property
    def progress(self) -> tuple[str, float]:
        """Latest (stage text, overall fraction 0..1)."""
        return self._progress

    def takeMessages(self) -> list[str]:
        """Stage changes and worker messages since the previous call (for a log)."""
        messages, self._messages = self._messages, []
        return messages

    def pollInto(self, showProgress: ProgressCallback, log: Callable[[str], None]) -> bool:
        """:meth:`poll`, then hand the progress and the new messages to a panel (its QTimer slot's
        body); True once the worker has ended."""
        done = self.poll()
        showProgress(*self.progress)
        for message in self.takeMessages():
            log(message)
        return done

    def cancel(self, reason: str | None = None) -> None:
        """Stop the worker: close its stdin, end its process tree; kill it after the grace period.
        Also valid once the worker has ended but before :meth:`finish`: nothing is imported then."""
        if self._cancelAt is not None:
            return
        self.cancelReason = reason
        self._cancelAt = time.monotonic()
        if self._done:
            return
        if self._process is None:
            self._close()
            return
        try:
            self._process.stdin.close()
        except OSError:
            pass
        endProcessTree(self._process, force=False)

    @property
    def cancelRequested(self) -> bool:
        return self._cancelAt is not None

    # -- ending (main thread) ---------------------------------------------------------------
    def finish(self) -> Any:
        """Once done: raise the run's error (CancelledError, ClnetError, WorkerError) or return the
        ``onResult`` hook's value. The job's folder is deleted afterwards."""
        if not self._done:
            raise RuntimeError("The job is still running.")
        try:
            if self.cancelRequested:
                raise CancelledError(self.cancelReason or "Cancelled by the user.")
            if self.errorEvent is not None:
                raise errorFromEvent(self.errorEvent, self.details, self.task)
            if self.resultEvent is None or self.returncode != 0:
                raise failureFromExit(self.returncode, self.details, self.task)
            return self._onResult(self.resultEvent) if self._onResult is not None else self.resultEvent
        finally:
            self.removeWorkDir()

    def discard(self) -> None:
        """Cancel if running, wait for the worker to end, and drop its folder (result unused)."""
        self.cancel()
        self.wait(timeout=self.graceSeconds + 2)
        if self._done:
            try:
                self.finish()
            except Exception:  # CancelledError, mostly: nothing to report to anyone
                pass
        else:
            self.removeWorkDir()

    def removeWorkDir(self) -> None:
        if not self.keepWorkDir:
            shutil.rmtree(self.workDir, ignore_errors=True)

    def progressText(self, event: dict) -> str:
        """The text shown for a progress event: its stage (subclasses add their own fields)."""
        return str(event.get("stage", ""))

    # -- internals ---------------------------------------------------------------------------
    def _readEvents(self, final: bool = False) -> None:
        if self._events is None:
            return
        chunk = self._events.read()
        if chunk:
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if final and self._buffer:  # a last line without newline (the worker died mid-write)
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        from clnet.events import parse_event

        event = parse_event(line)
        if event is None:
            if line.strip():
                log.debug("worker: %s", line.decode("utf-8", "replace"))
            return
        kind = event["event"]
        if kind == "progress":
            stage = str(event.get("stage", ""))
            if stage != self._stage:
                self._messages.append(stage)
                self._stage = stage
            self.progressEvent = event
            self._progress = (self.progressText(event), float(event.get("fraction", 0.0)))
        elif kind == "message":
            self._messages.append(str(event.get("text", "")))
        elif kind == "result":
            self.resultEvent = event
        elif kind == "error":
            self.errorEvent = event

    def _close(self) -> None:
        self._done = True
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._process is not None:
            if self._process.stdin is not None and not self._process.stdin.closed:
                try:
                    self._process.stdin.close()
                except OSError:
                    pass
            self.details = _tail(self.workDir / LOG_FILE)

    def __repr__(self) -> str:
        state = "done" if self._done else ("cancelling" if self.cancelRequested else "running")
        return f"<ProcessJob {' '.join(self.args[:1])} pid={self.pid} {state}>"


def _tail(path: Path, limit: int = 8000) -> str:
    """The last ``limit`` characters of a text file ('' when missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def eventsOf(path: str | os.PathLike) -> list[dict]:
    """All events in an events file (for tests and post-mortems)."""
    from clnet.events import parse_event

    with open(path, "rb") as f:
        return [e for e in (parse_event(line) for line in f) if e is not None]


__all__ = ["EVENTS_FILE", "LOG_FILE", "ProcessJob", "WorkerError", "endProcessTree", "eventsOf",
           "pythonExecutable", "workerEnvironment"]
