"""``python -m clnet.worker ARGS``: the ``clnet`` command, run as a GUI's worker process.

It is ``python -m clnet ARGS`` (same arguments, same ``--progress json`` events, same exit codes)
plus one rule: the worker exits as soon as its standard input reaches end of file. The parent
(the Slicer module) holds a pipe to the worker's stdin and never writes to it, so the pipe closes
when the parent closes it on Cancel or when the parent dies (crash, kill). A segmentation then
stops within moments instead of running on as an orphan that holds the CPU, GPU and memory.
A SIGTERM (what Cancel sends right after closing stdin) ends it the same way. Either way the
folders registered in :mod:`clnet.scratch` are removed first.

Slicer starts this through its ``PythonSlicer`` launcher, which hands its own stdin, stdout and
stderr straight to the Python it launches (CTK's AppLauncher forwards all three channels), so the
rule holds behind the launcher too.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence

EXIT_PARENT_GONE = 130
"""Exit code when stdin closed: the same as a cancelled CLI run."""


def _exit_on_stdin_eof() -> None:
    """Block on stdin until end of file, then end the process at once. The only cleanup is of the
    folders registered in :mod:`clnet.scratch` (a training's staging folder in the user model folder);
    the parent owns the run's own folder and deletes it, and outputs are written atomically, so no
    half file is left.

    Reads the raw file descriptor: a thread blocked inside ``sys.stdin.buffer`` holds its lock,
    and Python aborts at exit when a daemon thread holds it."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no stdin at all (pythonw): nothing to watch
        return
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    try:
        from .scratch import remove_registered

        remove_registered()
    finally:
        os._exit(EXIT_PARENT_GONE)


def _exit_on_sigterm(signum, frame) -> None:
    """The parent ends the worker's process group with SIGTERM right after closing stdin: clean up
    the registered folders first (the default action would end the process before the stdin
    watcher runs)."""
    try:
        from .scratch import remove_registered

        remove_registered()
    finally:
        os._exit(EXIT_PARENT_GONE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` while a daemon thread watches stdin."""
    if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    threading.Thread(target=_exit_on_stdin_eof, name="clnet-parent-watch", daemon=True).start()
    from .cli import main as cli_main

    return cli_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
