"""What went wrong in a worker process, as one message that says what to do.

A worker ends in one of three ways besides success: it reports an ``error`` event (the CLI caught
the problem: bad input, bad model, cancel, or an unexpected exception), it dies without a word
(killed for memory, crashed, missing packages before the CLI started), or it is cancelled by us.
This module turns the first two into exceptions whose text goes into the widget's message box.
"""

from __future__ import annotations

import re
import signal

from clnet import errors as clnet_errors
from clnet.errors import CancelledError, ClnetError


class WorkerError(ClnetError):
    """The worker process failed in a way the user can act on (the message says how)."""


class DependencyMissingError(WorkerError):
    """The worker could not import a package it needs (torch, SimpleITK, ...)."""


_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")


def missingModule(text: str) -> str | None:
    """The top-level package named in a 'No module named ...' message, if any."""
    match = _MISSING_MODULE.search(text or "")
    return match.group(1).split(".")[0] if match else None


def dependencyMissing(module: str, task: str = "segmentation") -> DependencyMissingError:
    if module == "torch":
        return DependencyMissingError(
            f"PyTorch is not installed in 3D Slicer's Python, so the {task} process cannot run.",
            "Install the PyTorch extension from the Extensions Manager and restart Slicer, then press "
            "Segment: the module installs PyTorch through it.")
    return DependencyMissingError(
        f"The Python package '{module}' is not installed in 3D Slicer's Python, so the {task} "
        "process cannot run.",
        "Press Segment again and accept the installation, or run "
        f"slicer.util.pip_install('{module}') in Slicer's Python console.")


def _lastLines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def errorFromEvent(event: dict, details: str = "", task: str = "segmentation") -> ClnetError:
    """The exception for a worker's ``error`` event (same class as in the worker when it is one of
    clnet's own errors). ``task`` names the job in messages: "segmentation", "training", ..."""
    kind = str(event.get("type") or "")
    message = str(event.get("message") or f"The {task} failed.")
    hint = event.get("hint") or None
    if kind == "CancelledError":
        return CancelledError(message)
    cls = getattr(clnet_errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, ClnetError):
        return cls(message, hint)
    module = missingModule(message) if kind in ("ModuleNotFoundError", "ImportError") else None
    if module:
        return dependencyMissing(module, task)
    if kind == "MemoryError":
        return WorkerError(f"The {task} process ran out of memory.", _memoryHint(task))
    return WorkerError(f"The {task} failed with an unexpected error ({kind}: {message}).",
                       "The module's log shows the details; please report them with the input's size and "
                       "the model used.")


_MEMORY_HINT = ("Try Fast mode or fewer anatomies, close other programs, or run on the other device "
                "(CPU / GPU).")


def _memoryHint(task: str) -> str:
    if task == "segmentation":
        return _MEMORY_HINT
    return "Close other programs, or run on the other device (CPU / GPU)."


def failureFromExit(returncode: int | None, details: str = "", task: str = "segmentation") -> WorkerError:
    """The exception for a worker that ended without a result or error event."""
    module = missingModule(details)
    if module:
        return dependencyMissing(module, task)
    if returncode == 0:
        return WorkerError(f"The {task} process ended without a result.",
                           f"Its last output: {_lastLines(details) or 'none'}.")
    signalNumber = _signalOf(returncode)
    if signalNumber == 9:  # SIGKILL: what the Linux OOM killer sends
        return WorkerError(f"The {task} process was killed (SIGKILL), most likely because the computer "
                           "ran out of memory.", _memoryHint(task))
    if signalNumber is not None or "exit abnormally" in (details or "") or _isWindowsCrash(returncode):
        name = _signalName(signalNumber) if signalNumber is not None else f"exit code {returncode}"
        return WorkerError(f"The {task} process stopped unexpectedly ({name}); it was killed or it "
                           "crashed, often because memory ran out.", _memoryHint(task))
    return WorkerError(f"The {task} process failed (exit code {returncode}).",
                       f"Its last output: {_lastLines(details) or 'none'}.")


def _signalOf(returncode: int | None) -> int | None:
    """The signal that ended the process (POSIX: negative code; a shell reports 128 + signal)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if returncode in (128 + 9, 128 + 6, 128 + 11):
        return returncode - 128
    return None


def _signalName(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _isWindowsCrash(returncode: int | None) -> bool:
    """NTSTATUS error codes (0xC0000005 access violation, 0xC0000017 no memory, ...)."""
    return returncode is not None and (returncode & 0xFFFFFFFF) >= 0xC0000000
