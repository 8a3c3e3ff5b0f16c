"""``run_batch``: segment many CTs with one model load, resuming where an earlier run stopped."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ClnetError
from ..io import read_image, validate_ct
from .cases import Case, discover_cases
from .job import JobContext, SegmentOptions, model_identity, run_case, settings_key, skipped_record
from .manifest import CSV_NAME, JSONL_NAME, ManifestWriter, write_summary_csv
from .prefetch import Prefetcher
from .progress import BatchProgress, NoProgress, TqdmProgress
from .resume import verified_done


@dataclass
class BatchSummary:
    """What a batch run did: one final record per case (ok, skipped or failed)."""

    out_dir: Path
    records: list[dict] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(r["status"] for r in self.records)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every case is ok or skipped, 1 when any failed."""
        return 1 if self.failed else 0

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / JSONL_NAME

    def summary_line(self) -> str:
        c = self.counts
        line = f"{len(self.records)} case(s): {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed"
        if c["failed"]:
            line += f" — {c['failed']} case(s) FAILED, see {self.out_dir / CSV_NAME}"
        return line


def _progress(progress: bool | BatchProgress | None) -> BatchProgress:
    if progress is True:
        return TqdmProgress()
    return progress or NoProgress()


def run_batch(
    inputs: Iterable[str | os.PathLike] | Sequence[Case],
    out_dir: str | os.PathLike,
    *,
    model=None,
    device: str = "auto",
    batch_size: int = 1,
    precision: str = "auto",
    official_compat: bool | str | None = None,
    resume: bool = True,
    prefetch: int = 2,
    ray: str | bool | None = None,
    ray_workers: int | None = None,
    ray_cpus_per_worker: int | None = None,
    retries: int = 2,
    progress: bool | BatchProgress | None = None,
    segmenter=None,
    **segment_options,
) -> BatchSummary:
    """Segment every case found in ``inputs`` into ``out_dir/<case id>/``.

    ``segment_options`` are those of ``clnet segment`` (anatomies, regions, fast, force, overlap,
    formats, stats, preview, per_decoder). With ``resume`` (default) cases whose outputs are
    complete and intact are skipped. ``prefetch`` images are read ahead in a background thread
    (0: read inline). ``ray`` = True/"local" runs on a local Ray instance, any other string is
    a Ray address ("auto", "ray://head:10001"). ``precision``, ``official_compat``: see :class:`Segmenter`. ``segmenter``
    reuses an already loaded model.
    Per-case problems are recorded, never raised; options that make every case fail (unknown
    anatomy, unknown format, bad model) raise :class:`ClnetError` before any case runs.
    """
    options = SegmentOptions(**segment_options)
    items = list(inputs)
    cases = items if items and all(isinstance(c, Case) for c in items) else discover_cases(items)
    if not cases:
        raise ClnetError("No cases to segment.", "Give image files, folders, DICOM series folders or a CSV list.")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    report = _progress(progress)
    if ray:
        from .ray_backend import run_on_ray

        records = run_on_ray(cases, out, options, model=model, device=device, batch_size=batch_size,
                             precision=precision, official_compat=official_compat, address=None if ray is True else str(ray), workers=ray_workers,
                             cpus_per_worker=ray_cpus_per_worker, resume=resume, retries=retries, progress=report)
    else:
        if segmenter is None:
            from ..inference import Segmenter

            segmenter = Segmenter(model, device=device, batch_size=batch_size, precision=precision,
                                  official_compat=official_compat)
        records = run_local(cases, out, options, segmenter, resume=resume, prefetch=prefetch, progress=report)
    return BatchSummary(out, records)


def run_local(cases: Sequence[Case], out: Path, options: SegmentOptions, segmenter, resume: bool = True,
              prefetch: int = 2, progress: BatchProgress | None = None) -> list[dict]:
    """Run the cases one after another in this process (reading ahead in a thread)."""
    segmenter.resolve(options.anatomies, options.regions)  # a bad name fails here, not once per case
    model = model_identity(segmenter.manifest, segmenter.model.directory)
    model["official_compat"] = segmenter.official_compat_enabled
    ctx = JobContext(out, model, settings_key(model, options), uuid.uuid4().hex[:12])
    writer = ManifestWriter(out)
    progress = progress or NoProgress()

    def load(case: Case):
        # Runs in the reader thread: resume check (hashing) and reading both overlap the network.
        done = verified_done(out / case.id, ctx.settings_key) if resume else None
        if done is not None:
            return "skip", done, 0.0
        t = time.perf_counter()
        try:
            loaded = read_image(case.input)
            validate_ct(loaded.image, force=options.force)  # fail early on a non-CT
        except Exception as exc:  # kept with its read time and recorded by run_case
            return "image", exc, time.perf_counter() - t
        return "image", loaded, time.perf_counter() - t

    records: list[dict] = []
    progress.start(len(cases))
    reader = Prefetcher(cases, load, depth=prefetch)
    try:
        for case, got in reader:
            if isinstance(got, BaseException):  # a bug in load itself: still only this case
                record = run_case(segmenter, case, got, 0.0, options, ctx)
            elif got[0] == "skip":
                writer.recover(got[1])
                record = skipped_record(ctx, case, got[1])
            else:
                progress.stage(case.id, "starting", 0.0)
                record = run_case(segmenter, case, got[1], got[2], options, ctx,
                                  progress=lambda text, f, cid=case.id: progress.stage(cid, text, f))
            got = None  # drop this image before waiting for the next one
            writer.append(record)
            records.append(record)
            progress.finished(record)
    finally:
        reader.close()
        progress.close()
        if records:
            write_summary_csv(out, records)
    return records

