"""The batch manifest: one JSON line per case attempt, plus a CSV summary of the last run.

``batch_manifest.jsonl`` is only ever appended to (one fsync'ed line per record), so it keeps
the history of every run over the same output folder; a line torn by a crash is skipped when
reading and never glued to the next record. ``batch_manifest.csv`` is rewritten atomically at
the end of each run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from ..io import atomic_write

JSONL_NAME = "batch_manifest.jsonl"
CSV_NAME = "batch_manifest.csv"
STATUSES = ("ok", "failed", "skipped", "retrying")
CSV_FIELDS = ("id", "status", "input", "error", "seconds", "output_dir", "attempt", "backend", "run_id")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(case_id: str, input_path: str | Path, status: str, **fields) -> dict:
    """A manifest record; see docs/batch.md for the fields."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return {"id": case_id, "input": str(input_path), "status": status, "error": None, "time": utc_now(), **fields}


class ManifestWriter:
    """Appends records to ``batch_manifest.jsonl``; safe to call from several threads."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / JSONL_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._repair_torn_tail()
        self._ok = ok_keys(read_records(self.path))

    def _repair_torn_tail(self) -> None:
        # After a kill mid-write the last line has no newline; start a fresh line so the next
        # record stays parseable (the torn fragment is skipped by read_records).
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:
                with open(self.path, "ab") as fh:
                    fh.write(b"\n")

    def recover(self, done: Mapping) -> None:
        """Append the ``ok`` record kept in a case's completion marker if the manifest lacks it
        (the run that finished the case was killed before appending it)."""
        record = done.get("record")
        if record and (record["id"], record.get("run_id")) not in self._ok:
            self.append({**record, "recovered": True})

    def append(self, record: Mapping) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            if record.get("status") == "ok":
                self._ok.add((record["id"], record.get("run_id")))


def read_records(path: str | Path) -> list[dict]:
    """All complete records of a ``batch_manifest.jsonl`` (a torn line from a crash is skipped)."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            records.append(rec)
    return records


def ok_keys(records: Iterable[Mapping]) -> set[tuple[str, str]]:
    """(case id, run id) of every ``ok`` record."""
    return {(r["id"], r.get("run_id")) for r in records if r.get("status") == "ok"}


def final_records(records: Iterable[Mapping]) -> list[Mapping]:
    """The last non-``retrying`` record of each case, in first-seen order."""
    last: dict[str, Mapping] = {}
    for rec in records:
        if rec.get("status") != "retrying":
            last[rec["id"]] = rec
    return list(last.values())


def write_summary_csv(out_dir: Path, records: Iterable[Mapping]) -> Path:
    """Atomically (re)write ``batch_manifest.csv`` with one row per case of this run."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        row = dict(rec)
        row["seconds"] = (rec.get("timings_s") or {}).get("total", "")
        writer.writerow(row)
    path = Path(out_dir) / CSV_NAME
    text = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
