"""``clnet models download official``: release → verified files → importer → installed model.

Steps: list the release (hub revision or local copy) and plan the files the chosen heads need;
stop early when the installed model already came from exactly those files; fetch and verify each
file (size and sha256 / git blob id recorded by the hub); run :func:`clnet.official.import_official`
on a tree of just those files; record where they came from in the manifest; install the result
with :func:`clnet.registry.install_model` (verifies every tensor, atomic). Work folders live in the
user models folder and are removed on success, failure and cancel alike; only the download folder's
finished and part files survive a failure, so that the next run continues.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ModelError
from ..registry import clnet_home, install_model, set_default_model, user_models_dir
from . import local, remote
from .release import OFFICIAL_REPO, DownloadPlan, HeadInfo, Release, ReleaseFile, resolve_heads

DEFAULT_NAME = "clnet-official"
_STALE_WORK_SECONDS = 6 * 3600


@dataclass
class Feedback:
    """Where the steps report to: ``progress(stage, fraction, **details)`` and ``message(text)``."""

    progress: Callable[..., None] = field(default=lambda stage, fraction, **details: None)
    message: Callable[[str], None] = field(default=lambda text: None)


@dataclass
class DownloadResult:
    """What a run did (also the ``result`` event of ``--progress json``)."""

    name: str
    path: Path
    heads: list[str]
    source: str
    commit: str | None
    release_bytes: int  # what the chosen heads need from the release
    downloaded_bytes: int  # what this run actually transferred
    model_bytes: int  # the installed model folder
    up_to_date: bool = False
    originals: Path | None = None
    default: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "path": str(self.path), "heads": self.heads, "source": self.source,
                "commit": self.commit, "release_bytes": self.release_bytes,
                "downloaded_bytes": self.downloaded_bytes, "model_bytes": self.model_bytes,
                "up_to_date": self.up_to_date, "originals": str(self.originals) if self.originals else None,
                "default": self.default, "seconds": round(self.seconds, 2)}


def downloads_dir(repo: str = OFFICIAL_REPO) -> Path:
    """clnet's own download folder for ``repo`` (finished and part files; kept with --keep-originals)."""
    return clnet_home() / "downloads" / repo.replace("/", "--")


# --------------------------------------------------------------------------- listing
@contextlib.contextmanager
def open_release(source: str | Path | None, repo: str, revision: str,
                 feedback: Feedback | None = None) -> Iterator[tuple[Release, str | None, str, Path | None]]:
    """``(release, commit, label, local copy)`` for the hub revision (local copy None), or for a local
    folder / .zip (``source``).

    Offline, or when the hub cannot be reached, a hub cache snapshot of the revision serves instead
    when there is one.
    """
    fb = feedback or Feedback()
    if source is not None:
        path = Path(source).expanduser()
        if path.is_dir():
            yield Release(local.list_folder(path), f"The folder {path}"), None, f"folder {path.resolve()}", path
        elif path.is_file():
            yield Release(local.list_zip(path), f"The archive {path}"), None, f"archive {path.resolve()}", path
        else:
            raise ModelError(f"--from {path}: no such folder or .zip archive.",
                             "Give the folder of a copy of the release (the hub repository's files) or a .zip of it.")
        return
    try:
        commit, files = remote.list_revision(repo, revision)
    except ModelError:
        snap = local.hub_cache_snapshot(repo, revision)
        if snap is None:
            raise
        fb.message(f"the model hub is not reachable; using the hub cache's copy {snap}")
        yield Release(local.list_folder(snap), f"The hub cache copy {snap}"), snap.name, f"folder {snap}", snap
        return
    yield (Release(files, f"The model hub repository {repo} at {revision}"), commit, f"{remote.endpoint()}/{repo}",
           None)


def describe_release(source: str | Path | None = None, repo: str = OFFICIAL_REPO,
                     revision: str = "main") -> tuple[list[HeadInfo], int]:
    """The release's heads with their download sizes (from the hub's records, or the copy's file sizes),
    and the bytes every download needs whatever the heads (general encoder and body-part model).

    One listing of the release; this is what ``--list-heads`` prints and what a dialog can show.
    """
    with open_release(source, repo, revision) as (release, _commit, _label, _copy):
        enc = release.encoder_task()
        return release.heads(), (enc.size if enc else 0) + sum(f.size or 0 for f in release.bpr_model)


# --------------------------------------------------------------------------- helpers
def _record(repo: str, revision: str, commit: str | None, label: str, plan: DownloadPlan) -> dict[str, Any]:
    files = {}
    for f in plan.files:
        entry: dict[str, Any] = {"bytes": f.size}
        if f.sha256:
            entry["sha256"] = f.sha256
        elif f.blob_id:
            entry["git_blob_id"] = f.blob_id
        files[f.path] = entry
    return {"repo": repo, "revision": revision, "commit": commit, "source": label, "heads": sorted(plan.heads),
            "files": files}


def _installed_record(name: str) -> dict | None:
    path = user_models_dir() / name / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("provenance", {}).get("download")
    except (OSError, ValueError, AttributeError):
        return None


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove_stale_work() -> None:
    root = user_models_dir()
    if not root.is_dir():
        return
    now = time.time()
    for d in root.glob(".download-*"):
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > _STALE_WORK_SECONDS:
                shutil.rmtree(d, ignore_errors=True)


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


class _ByteProgress:
    """Turns bytes received into ``download`` progress over the whole plan."""

    def __init__(self, fb: Feedback, total: int, span: float) -> None:
        self.fb, self.total, self.span = fb, max(total, 1), span
        self.done = 0  # bytes accounted for (received, resumed or already present)
        self.received = 0  # bytes transferred by this run
        self.file, self.file_done, self.file_size = "", 0, 0
        self._last = -1.0

    def start(self, f: ReleaseFile, already: int = 0) -> None:
        self.file, self.file_done, self.file_size = f.path, already, f.size or 0
        self.done += already
        self._emit(force=True)

    def add(self, n: int) -> None:
        self.done += n
        self.received += n
        self.file_done += n
        self._emit()

    def skip(self, f: ReleaseFile) -> None:
        self.start(f, f.size or 0)

    def _emit(self, force: bool = False) -> None:
        frac = self.span * min(self.done / self.total, 1.0)
        if force or frac - self._last >= 0.002 or self.file_done == self.file_size:
            self._last = frac
            self.fb.progress(f"downloading {PurePosixPath(self.file).name}", frac, file=self.file,
                             bytes=self.file_done, total=self.file_size, all_bytes=self.done, all_total=self.total)


# --------------------------------------------------------------------------- the command
def download_official(
    heads: Sequence[str] | None = None,
    *,
    source: str | Path | None = None,
    revision: str = "main",
    name: str = DEFAULT_NAME,
    set_default: bool = False,
    keep_originals: bool = False,
    force: bool = False,
    repo: str = OFFICIAL_REPO,
    feedback: Feedback | None = None,
) -> DownloadResult:
    """Fetch, verify, import and install the official CL-Net model (all heads, or ``heads``).

    ``source`` is a local copy of the release (folder or .zip) instead of the hub. The installed
    model is named ``name`` and replaces an earlier install of that name only once the new one is
    complete and verified. Raises :class:`ModelError` with a hint for everything a user can fix.
    """
    fb = feedback or Feedback()
    t0 = time.monotonic()
    wanted = resolve_heads(heads)
    _remove_stale_work()
    with open_release(source, repo, revision, fb) as (release, commit, label, copy):
        plan = release.plan(wanted)
        record = _record(repo, revision, commit, label, plan)
        from_hub = copy is None
        fb.message(f"{label}: {len(plan.files)} files, {plan.size / 1e6:.1f} MB for the general encoder, "
                   f"{', '.join(plan.heads)} and the body-part model")
        if from_hub and not force:
            old = _installed_record(name)
            if old is not None and {k: old.get(k) for k in ("repo", "commit", "heads", "files")} == \
                    {k: record[k] for k in ("repo", "commit", "heads", "files")}:
                target = user_models_dir() / name
                fb.message(f"{name} is already installed from {repo} at {commit} with these heads; nothing to download")
                if set_default:
                    set_default_model(name)
                fb.progress("up to date", 1.0)
                return DownloadResult(name, target, sorted(plan.heads), label, commit, plan.size, 0,
                                      _folder_bytes(target), up_to_date=True, default=set_default,
                                      seconds=time.monotonic() - t0)
        root = user_models_dir()
        root.mkdir(parents=True, exist_ok=True)
        originals = downloads_dir(repo)
        span = 0.8 if from_hub else 0.2
        bp = _ByteProgress(fb, plan.size, span)
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            work = Path(tmp)
            tree = work / "release"
            if from_hub:
                assert commit is not None
                for f in plan.files:
                    dest = originals / f.path
                    if dest.is_file() and remote.check_file(dest, f) is None:
                        bp.skip(f)
                        continue
                    bp.start(f)
                    remote.fetch_file(repo, commit, f, dest, progress=bp.add,
                                      on_resume=lambda n, f=f: (fb.message(f"resuming {f.path} at {n} bytes"),
                                                                bp.start(f, n)))
                for f in plan.files:
                    local.link_or_copy(originals / f.path, tree / f.path)
            else:
                if copy.is_dir():
                    placed = {f.path: copy / f.path for f in plan.files}
                else:
                    placed = local.extract_members(copy, [f.path for f in plan.files], work / "unzipped")
                for f in plan.files:
                    bp.start(f)
                    problem = remote.check_file(placed[f.path], f)
                    if problem:
                        raise ModelError(f"{f.path} in {label} is damaged ({problem}).", "Get a fresh copy of it.")
                    local.link_or_copy(placed[f.path], tree / f.path)
                    bp.add(f.size or 0)
            model = _import(tree / plan.root if plan.root else tree, work / "model", plan, name, fb, span)
            _add_provenance(model, record)
            fb.progress("verifying and installing", 0.95)
            target = install_model(model, name=name, overwrite=True, move=True)
        if set_default:
            set_default_model(name)
        kept = None
        if from_hub and keep_originals:
            kept = originals
            fb.message(f"kept the downloaded originals in {originals} (usable with --from)")
        elif from_hub:
            for f in plan.files:
                (originals / f.path).unlink(missing_ok=True)
                _prune_empty((originals / f.path).parent, originals.parent)
        fb.progress("done", 1.0)
        return DownloadResult(name, target, sorted(plan.heads), label, commit, plan.size,
                              bp.received if from_hub else 0,
                              _folder_bytes(target), originals=kept, default=set_default,
                              seconds=time.monotonic() - t0)


def _import(root: Path, out: Path, plan: DownloadPlan, name: str, fb: Feedback, start: float) -> Path:
    from ..official.importer import import_official  # torch: only once files are here

    steps = [0]
    n = 1 + len(plan.tasks) + len(plan.heads)

    def log(text: str) -> None:  # the importer's log: one "reading …" per task, one "  HEAD: …" per head
        if text.startswith(("reading", "  ")):
            steps[0] += 1
        fb.progress("importing", start + (0.95 - start) * min(steps[0] / n, 1.0))

    fb.progress("importing", start)
    report = import_official(root, out, heads=plan.heads, name=name, log=log)
    for w in report.warnings:
        fb.message(f"warning: {w}")
    return report.directory


def _add_provenance(model: Path, record: dict[str, Any]) -> None:
    """Say in the manifest where the files came from (what the next run compares against)."""
    path = model / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    prov = data.setdefault("provenance", {})
    prov["download"] = record
    prov["source"] = record["source"]
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
