"""The model hub side: list a repository revision with its recorded sizes and hashes, fetch files
resumably. Everything goes through ``huggingface_hub`` (imported here only, and lazily), so
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and proxy settings apply as for any hub tool.

Files are fetched with the library's ``http_get`` into ``<path>.<etag>.part`` files of clnet's own
download folder, not the hub cache: an interrupted transfer (network loss, cancel, kill) leaves its
part file, and the next run continues it with an HTTP Range request. Once complete and verified a
file is renamed to its final name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelError
from .release import ReleaseFile

Progress = Callable[[int], None]  # bytes just received
_CHUNK = 1 << 20


def offline_mode() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_error(what: str) -> ModelError:
    return ModelError(f"Cannot {what}: offline mode is on (HF_HUB_OFFLINE) and clnet has no copy of the release.",
                      "Unset HF_HUB_OFFLINE, or use `clnet models download official --from DIR|ZIP` with a copy "
                      "of the release made elsewhere (the hub repository's files, as a folder or a .zip).")


def hub_error(exc: BaseException, what: str, repo: str, revision: str) -> ModelError:
    """A user-facing error for anything ``huggingface_hub`` (or the network below it) raised."""
    from huggingface_hub import errors as hf_errors

    name = type(exc).__name__
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return _offline_error(what)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return ModelError(f"The model hub repository {repo} has no revision {revision!r}.",
                          "Check --revision (a branch, tag or commit of the repository).")
    if isinstance(exc, getattr(hf_errors, "GatedRepoError", ())):
        return ModelError(f"The model hub repository {repo} is gated: it needs you to accept its terms and log in.",
                          "Accept the terms on the repository's page, then set HF_TOKEN (or run `hf auth login`).")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return ModelError(f"The model hub at {endpoint()} has no repository {repo} (or it needs a login).",
                          "Check HF_ENDPOINT and HF_TOKEN, or use --from DIR|ZIP with a copy of the release.")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return ModelError(f"The model hub at {endpoint()} answered HTTP {status} while clnet tried to {what}.",
                          "Try again later, or use --from DIR|ZIP with a copy of the release.")
    return ModelError(f"Cannot reach the model hub at {endpoint()} to {what} ({name}: {str(exc)[:200]}).",
                      "Check the network (and HF_ENDPOINT / proxy settings), then run the same command again: "
                      "finished and partial files are kept and the download continues where it stopped. "
                      "Without network, use `clnet models download official --from DIR|ZIP` with a copy of the "
                      "release.")


def list_revision(repo: str, revision: str) -> tuple[str, list[ReleaseFile]]:
    """The commit ``revision`` points to and every file there with its size, LFS sha256 and git blob id."""
    if offline_mode():
        raise _offline_error("list the release")
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a ModelError with a hint
        raise hub_error(exc, "list the release", repo, revision) from None
    files = [ReleaseFile(s.rfilename, s.size if s.lfs is None else s.lfs.size,
                         s.lfs.sha256 if s.lfs is not None else None, s.blob_id)
             for s in (info.siblings or [])]
    return str(info.sha or revision), files


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content (what the hub records for files not stored with LFS)."""
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, expected: ReleaseFile) -> str | None:
    """None when ``path`` matches the recorded size and hash, else what is wrong."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"{size} bytes instead of {expected.size}"
    if expected.sha256:
        got = sha256_of(path)
        if got != expected.sha256.lower():
            return f"sha256 {got} instead of {expected.sha256}"
    elif expected.blob_id:
        got = git_blob_id(path)
        if got != expected.blob_id.lower():
            return f"git blob id {got} instead of {expected.blob_id}"
    return None


class _CountingFile:
    """The file ``http_get`` writes to: reports each chunk (for progress), rewinds when told to."""

    def __init__(self, fh, progress: Progress | None) -> None:
        self.fh, self.progress = fh, progress

    def write(self, data: bytes) -> int:
        n = self.fh.write(data)
        if self.progress is not None:
            self.progress(len(data))
        return n

    def seek(self, *args):
        return self.fh.seek(*args)

    def tell(self) -> int:
        return self.fh.tell()

    def truncate(self, *args):
        return self.fh.truncate(*args)

    def flush(self) -> None:
        self.fh.flush()


def fetch_file(repo: str, commit: str, file: ReleaseFile, dest: Path, progress: Progress | None = None,
               on_resume: Callable[[int], None] | None = None) -> None:
    """Download ``file`` of ``repo`` at ``commit`` to ``dest``, continuing a part file left by an earlier run.

    ``dest`` appears only once the transfer is complete and matches the recorded size and hash; a
    mismatch deletes the part file (a retry starts afresh) and raises :class:`ModelError`.
    """
    if offline_mode():
        raise _offline_error(f"download {file.path}")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    # http_get hands over data in chunks of this size (10 MB by default): smaller chunks give finer
    # progress, and bound what an interruption loses (a chunk still being received is not written).
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, _CHUNK)

    url = hf_hub_url(repo, file.path, revision=commit)
    try:
        meta = get_hf_file_metadata(url)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, f"download {file.path}", repo, commit) from None
    tag = "".join(c for c in (meta.etag or file.sha256 or file.blob_id or "x") if c.isalnum())[:16]
    part = dest.with_name(f"{dest.name}.{tag}.part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f"{dest.name}.*.part"):
        if stale != part:  # left by a download of another version of this file
            stale.unlink(missing_ok=True)
    done = part.stat().st_size if part.exists() else 0
    expected = file.size if file.size is not None else meta.size
    if expected is not None and done > expected:
        part.unlink()
        done = 0
    if done and on_resume is not None:
        on_resume(done)
    location = meta.location or url
    headers = build_hf_headers()
    if urlparse(location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)  # signed storage URL: the hub token stays with the hub
    try:
        with open(part, "ab") as fh:
            if expected is None or done < expected:
                http_get(location, _CountingFile(fh, progress), resume_size=done, headers=headers,
                         expected_size=expected)
            fh.flush()
    except (KeyboardInterrupt, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, f"download {file.path}", repo, commit) from None
    problem = check_file(part, file)
    if problem:
        part.unlink(missing_ok=True)
        raise ModelError(f"{file.path} from {repo} does not match what the hub records for it ({problem}); "
                         "it was deleted and nothing was installed.",
                         "Run the command again to download it afresh; if it keeps failing, the copy on the hub "
                         "or a proxy in between is damaged.")
    part.replace(dest)
