"""Local copies of the release for ``--from DIR|ZIP`` and offline use: list them, bring files out.

A folder may be an unpacked hub snapshot, a ``--keep-originals`` download folder, or a hub cache
snapshot (``…/snapshots/<commit>/``, whose files link to blobs named by their sha256: those
hashes are checked like the hub's). A .zip is checked member by member for path traversal and
links before any member is extracted, and only the members the plan needs are extracted.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

from ..errors import ModelError
from .release import ReleaseFile

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_BLOB = re.compile(r"^[0-9a-f]{40}$")


def list_folder(root: Path) -> list[ReleaseFile]:
    """Every file below ``root`` (paths relative to it), skipping download bookkeeping."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".cache", ".git"))
        for fn in sorted(filenames):
            if fn.endswith(".part"):
                continue
            path = Path(dirpath) / fn
            rel = path.relative_to(root).as_posix()
            sha = blob_id = None
            if path.is_symlink():  # a hub cache snapshot: blobs are named by sha256 (LFS) or git blob id
                blob = path.resolve().name
                sha = blob if _SHA256.match(blob) else None
                blob_id = blob if _GIT_BLOB.match(blob) else None
            try:
                out.append(ReleaseFile(rel, path.stat().st_size, sha, blob_id))
            except OSError:
                continue  # a dangling link
    return out


def list_zip(archive: Path) -> list[ReleaseFile]:
    from ..registry import check_zip_members

    try:
        with zipfile.ZipFile(archive) as zf:
            check_zip_members(zf, archive, Path("/nonexistent-clnet-zip-root"))
            return [ReleaseFile(i.filename.rstrip("/"), i.file_size) for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{archive} is not a readable .zip archive ({exc}).",
                         "Give the folder of the release or a .zip of it.") from None


def extract_members(archive: Path, names: list[str], dest: Path) -> dict[str, Path]:
    """Extract ``names`` (already checked by :func:`list_zip`) under ``dest``; returns where each went."""
    from ..registry import check_zip_members

    out = {}
    with zipfile.ZipFile(archive) as zf:
        check_zip_members(zf, archive, dest)
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            out[name] = target
    return out


def hub_cache_snapshot(repo: str, revision: str) -> Path | None:
    """The hub cache's snapshot folder of ``repo`` at ``revision`` (a branch, tag or commit), if any."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = revision
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` without copying when the file system allows it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
        return
    except OSError:
        pass
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)
