"""Write files so that readers never see a half-written output."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ClnetError, OutputError


def _format_suffix(path: Path) -> str:
    """Suffix(es) that select the file format, e.g. '.nii.gz' or '.nrrd'."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() == ".gz":
        return "".join(suffixes[-2:])
    return path.suffix


STALE_TEMP_SECONDS = 600


def check_output_folder(folder: Path) -> None:
    """Check, without creating anything, that ``folder`` is or can become a writable folder.

    Called before long work so a bad ``-o`` fails in a second, not after the whole segmentation.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Output location '{folder}' exists and is not a folder.", "Choose another output folder.")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"Cannot create output folder '{folder}': '{probe}' is a file.",
                          "Choose another output location.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder '{folder}' cannot be written ('{probe}' is not writable).",
                          "Choose another output location or fix its permissions.")


def prepare_output_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and its parents) and prove it takes a file, before any long work.

    A permission check alone is not enough (root may "write" to ``/proc``; a full or read-only disk
    passes it too), so a small probe file is created and removed. Returns the folders this call
    created, deepest first, so a caller whose run fails can remove them again (:func:`remove_empty`).
    """
    folder = Path(folder).expanduser()
    check_output_folder(folder)  # the clearer messages for a file in the way or a read-only parent
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    _prepare_folder(folder)
    test = folder / f".clnet-write-test-{secrets.token_hex(4)}"
    try:
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"clnet")
        finally:
            os.close(fd)
    except OSError as exc:
        remove_empty(missing)
        raise OutputError(
            f"Cannot write into output folder '{folder}' ({exc.strerror or exc}).",
            "Choose another output location, or free disk space / fix its permissions.",
        ) from None
    finally:
        with contextlib.suppress(OSError):
            test.unlink()
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove each folder that is (still) empty, deepest first; others are left alone."""
    for f in folders:
        with contextlib.suppress(OSError):
            f.rmdir()


def remove_stale_temps(path: Path, older_than: float = STALE_TEMP_SECONDS) -> None:
    """Remove temp files a killed earlier write of ``path`` left behind (same naming, old enough)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()


def _prepare_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Output location '{folder}' exists and is not a folder.", "Choose another output folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:  # the parent is there (checked before), yet nothing can be made in it
            reason = "that file system does not allow new folders there"
        raise OutputError(
            f"Cannot create output folder '{folder}' ({reason}).",
            "Choose another output location or fix its permissions.",
        ) from None
    if not folder.is_dir():
        raise OutputError(f"Output location '{folder}' is not a folder.", "Choose another output location.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"Output folder '{folder}' is not writable.",
            "Choose another output location or fix its permissions.",
        )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, fsync it, then rename it onto ``path``.

    On any failure the temp file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Output path '{path}' is an existing folder.", "Give a file name instead.")
    _prepare_folder(path.parent)
    remove_stale_temps(path)
    # The temp name keeps the format suffix so that writers that pick a format by extension work.
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}{_format_suffix(path)}")
    try:
        write(tmp)
        if not tmp.is_file():
            raise OutputError(f"Writing '{path}' produced no file.", "Report this as a bug.")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except ClnetError:
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        raise OutputError(
            f"Cannot write '{path}' ({exc.strerror or exc}).",
            "Check free disk space and permissions of the output folder.",
        ) from None
    except RuntimeError as exc:
        # SimpleITK reports write failures (disk full, permission) as RuntimeError.
        _remove(tmp)
        if "SimpleITK" not in str(exc) and "ITK" not in str(exc):
            raise
        raise OutputError(
            f"Cannot write '{path}': the image writer failed.",
            "Check free disk space and permissions of the output folder.",
        ) from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(path.parent)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
