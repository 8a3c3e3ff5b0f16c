"""Per-case completion markers: what makes a finished case safe to skip on the next run.

``save_result`` writes every file atomically and ``segmentation.json`` last, and the runner
writes ``.done`` (the sha256 of every output) only after all of that. A case counts as done
when ``.done`` exists, was made with the same settings, and every file it lists still has its
sha256; anything less (killed mid-case, edited or deleted outputs, other settings) is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from ..checkpoint import sha256_file
from ..io import write_json

DONE_NAME = ".done"
COMPLETION_FILE = "segmentation.json"


def fingerprint(settings: Mapping) -> str:
    """Short stable hash of the settings that change the outputs (model, anatomies, formats...)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_files(written: Mapping[str, Path], case_dir: Path) -> list[Path]:
    """Every file ``save_result`` reported, with folders (masks/, decoders/) expanded."""
    files: list[Path] = []
    for path in written.values():
        path = Path(path)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and ".tmp-" not in p.name)
        else:
            files.append(path)
    # segmentation.json last so the list reads in write order.
    return sorted(files, key=lambda p: (p.name == COMPLETION_FILE, p.relative_to(case_dir).as_posix()))


def hash_outputs(files: list[Path], case_dir: Path) -> dict[str, str]:
    """{path relative to the case folder: sha256}."""
    return {p.relative_to(case_dir).as_posix(): sha256_file(p) for p in files}


def write_done(case_dir: Path, record: Mapping, settings_key: str) -> None:
    """Atomically mark ``case_dir`` complete (call after every output is on disk); ``record`` is
    the case's ``ok`` manifest record, holding the outputs' sha256s."""
    write_json(case_dir / DONE_NAME, {"settings_key": settings_key, "outputs": dict(record["outputs"]),
                                      "record": dict(record)})


def clear_done(case_dir: Path) -> None:
    """Remove the marker before a case is redone, so a crash mid-redo never looks complete."""
    with contextlib.suppress(FileNotFoundError):
        (case_dir / DONE_NAME).unlink()


def verified_done(case_dir: Path, settings_key: str) -> dict | None:
    """The marker's content if the case is complete and intact with these settings, else None."""
    try:
        done = json.loads((case_dir / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    outputs = done.get("outputs") if isinstance(done, dict) else None
    if done.get("settings_key") != settings_key or not isinstance(outputs, dict) or COMPLETION_FILE not in outputs:
        return None
    for rel, digest in outputs.items():
        path = case_dir / rel
        # A marker must never point outside its case folder (hand-edited or foreign marker).
        if ".." in Path(rel).parts or not path.is_file() or sha256_file(path) != digest:
            return None
    return done
