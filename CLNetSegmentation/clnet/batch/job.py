"""One case from image to verified outputs: segment, save, hash, mark done, make the record.

Shared by the local runner and the Ray workers so both write exactly the same files.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..catalog.anatomy import NAME_STYLES
from ..checkpoint import sha256_file
from ..errors import CancelledError, ClnetError
from ..inference.progress import ProgressCallback
from ..io import LoadedImage
from ..manifest import MANIFEST_NAME
from ..outputs import FORMATS, save_result
from .cases import Case
from .manifest import make_record
from .resume import clear_done, fingerprint, hash_outputs, output_files, write_done


@dataclass(frozen=True)
class SegmentOptions:
    """The ``clnet segment`` options that apply to every case of a batch."""

    anatomies: Sequence[str] | None = None
    regions: Sequence[str] | None = None
    fast: bool = False
    force: bool = False
    overlap: float | None = None
    formats: Sequence[str] = ("nifti",)
    stats: bool = False
    preview: bool = False
    per_decoder: bool = False
    names: str = "catalog"  # mask file names and statistics keys: catalog or TotalSegmentator style
    locate: bool | None = None  # None: the Segmenter's default (on for a subset)

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ClnetError(f"Unknown output format(s) {unknown}.", f"Choose from {', '.join(FORMATS)}.")
        if self.names not in NAME_STYLES:
            raise ClnetError(f"Unknown naming style {self.names!r}.", f"Choose {' or '.join(NAME_STYLES)}.")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(self).items()}


def model_identity(manifest, directory: Path | None) -> dict:
    """Name, version and sha256 of the model's manifest.json (which pins every weight's sha256)."""
    if directory is not None and (Path(directory) / MANIFEST_NAME).is_file():
        digest = sha256_file(Path(directory) / MANIFEST_NAME)
    else:  # an in-memory model: hash its canonical manifest instead
        digest = hashlib.sha256(json.dumps(manifest.to_dict(), sort_keys=True).encode()).hexdigest()
    return {"name": manifest.name, "version": manifest.version, "manifest_sha256": digest}


def settings_key(model: Mapping, options: SegmentOptions) -> str:
    """Resume key: outputs made with another model or other output-changing options are redone."""
    opts = options.to_dict()
    opts.pop("force")  # only decides whether a case may run, not what it produces
    for k in ("anatomies", "regions"):
        opts[k] = sorted(n.lower() for n in opts[k] or [])
    opts["formats"] = sorted(opts["formats"])
    # Official-compatible inference changes the labels, so outputs made with the other setting are redone.
    return fingerprint({"model_sha256": model["manifest_sha256"], "official_compat": model.get("official_compat"),
                        **opts})


@dataclass
class JobContext:
    """What every record of one run shares."""

    out_dir: Path
    model: dict
    settings_key: str
    run_id: str
    backend: str = "local"
    extra: dict = field(default_factory=dict)

    def record(self, case: Case, status: str, **fields) -> dict:
        return make_record(case.id, case.input, status, output_dir=str(self.out_dir / case.id), model=self.model,
                           run_id=self.run_id, backend=self.backend, host=socket.gethostname(),
                           **self.extra, **fields)


def skipped_record(ctx: JobContext, case: Case, done: Mapping) -> dict:
    """Record for a case whose earlier outputs were verified intact (``done``: its marker)."""
    earlier = done.get("record") or {}
    return ctx.record(case, "skipped", anatomies=earlier.get("anatomies"), outputs=done.get("outputs"),
                      completed_run=earlier.get("run_id"), timings_s={"total": 0.0})


def failure_fields(exc: BaseException) -> dict:
    """Error text for the manifest: a ClnetError's own message; type + message for anything else."""
    if isinstance(exc, ClnetError):
        return {"error": str(exc), "error_type": type(exc).__name__, "retryable": False}
    return {"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__, "retryable": True}


def run_case(segmenter, case: Case, loaded: LoadedImage | BaseException, read_s: float, options: SegmentOptions,
             ctx: JobContext, progress: ProgressCallback | None = None, attempt: int = 1) -> dict:
    """Segment one case and write its outputs; always returns a record (never raises, except
    on cancellation), so one bad case cannot stop the others."""
    case_dir = ctx.out_dir / case.id
    timings = {"read": round(read_s, 3)}
    start = time.perf_counter()
    try:
        if isinstance(loaded, BaseException):
            raise loaded
        clear_done(case_dir)
        result = segmenter.segment(loaded, anatomies=options.anatomies, regions=options.regions, fast=options.fast,
                                   force=options.force, overlap=options.overlap, progress=progress,
                                   per_decoder=options.per_decoder, locate=options.locate)
        timings["segment"] = round(time.perf_counter() - start, 3)
        timings.update({f"segment.{k}": round(v, 3) for k, v in result.timings.items()})
        t = time.perf_counter()
        written = save_result(result, case_dir, loaded, formats=options.formats, stats=options.stats,
                              preview=options.preview, names=options.names)
        timings["write"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        outputs = hash_outputs(output_files(written, case_dir), case_dir)
        timings["hash"] = round(time.perf_counter() - t, 3)
        timings["total"] = round(read_s + time.perf_counter() - start, 3)
        record = ctx.record(case, "ok", anatomies=[a.name for a in result.requested],
                            present=[a.name for a in result.present], outputs=outputs, warnings=result.warnings,
                            timings_s=timings, attempt=attempt)
        # The marker carries the whole record, so a run killed between this write and the
        # manifest append can still put the record into the manifest on resume.
        write_done(case_dir, record, ctx.settings_key)
        return record
    except CancelledError:
        raise
    except Exception as exc:  # recorded per case: one bad case must not stop the batch
        timings["total"] = round(read_s + time.perf_counter() - start, 3)
        anatomies = list(options.anatomies or []) or None
        return ctx.record(case, "failed", anatomies=anatomies, outputs=None, timings_s=timings, attempt=attempt,
                          **failure_fields(exc))
