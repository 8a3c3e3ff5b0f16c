"""Folders a run removes even when it is ended abruptly.

A worker process whose parent goes away (Cancel in Slicer, a crash) exits at once with
``os._exit`` (see :mod:`clnet.worker`), so ``finally`` blocks do not run. Work folders registered
here (``add-decoder``'s hidden staging folder in the user model folder, with its resampled scans and
checkpoints) are removed by the worker before it exits, so a cancelled training leaves nothing behind.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

_folders: set[Path] = set()
# Re-entrant: the SIGTERM handler runs on the main thread, possibly while that thread is inside one
# of these functions. Held during the removal, so a second caller (the stdin watcher and the SIGTERM
# handler both clean up, then exit) waits until the folders are gone before it ends the process.
_lock = threading.RLock()


def remove_on_abort(folder: str | Path) -> None:
    """Remove ``folder`` if the process is ended abruptly before :func:`forget` is called."""
    with _lock:
        _folders.add(Path(folder))


def forget(folder: str | Path) -> None:
    """The run has dealt with ``folder`` itself (moved or removed it)."""
    with _lock:
        _folders.discard(Path(folder))


def remove_registered() -> None:
    """Remove every registered folder (best effort: the process is about to exit)."""
    with _lock:
        for folder in list(_folders):
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():  # the run wrote into it meanwhile
                shutil.rmtree(folder, ignore_errors=True)
        _folders.clear()
