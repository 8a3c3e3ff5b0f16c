"""Turn the user's batch inputs (files, folders, DICOM series folders, CSV lists) into cases.

Every case gets an id that is unique within the batch and safe as a folder name, because the
id names the case's output folder and is what resume matches on: ids must be stable between
runs over the same inputs, so discovery is deterministic (sorted folder listings).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.dicom_series import is_dicom_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
_MAX_DEPTH = 4  # how deep folders of case folders are expanded
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    """One image to segment: ``id`` names its output folder, ``input`` is what `read_image` gets."""

    id: str
    input: Path


def safe_id(text: str) -> str:
    """A filesystem-safe id: letters, digits, '.', '_' and '-' only, never hidden or empty."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("._")
    return cleaned[:120] or "case"


def image_stem(path: Path) -> str:
    """File name without its image suffix (``ct.nii.gz`` → ``ct``)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def is_dicom_folder(folder: Path) -> bool:
    """A folder whose own files are DICOM is one series (one case), not a folder of cases."""
    files = [p for p in _visible(folder) if p.is_file()]
    # Checking a handful is enough: series folders are homogeneous, and reading every
    # preamble of a 2000-slice series would make discovery slow.
    for p in files[:8]:
        if p.name.lower().endswith(_DICOM_SUFFIXES) or is_dicom_file(p):
            return True
    return False


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _expand_folder(folder: Path, prefix: str, depth: int) -> list[tuple[str, Path]]:
    """(raw id, input) pairs for a folder of case files and/or case subfolders."""
    found: list[tuple[str, Path]] = []
    for entry in _visible(folder):
        if is_image_file(entry):
            found.append((prefix + image_stem(entry), entry))
        elif entry.is_dir():
            if is_dicom_folder(entry):
                found.append((prefix + entry.name, entry))
            elif depth < _MAX_DEPTH:
                inner = _expand_folder(entry, "", depth + 1)
                if len(inner) == 1:  # case001/ct.nii.gz → "case001"
                    found.append((prefix + entry.name, inner[0][1]))
                else:
                    found.extend((f"{prefix}{entry.name}_{i}", p) for i, p in inner)
    return found


def read_case_list(csv_path: Path) -> list[tuple[str, Path, bool]]:
    """Rows of a CSV with a ``path`` column and an optional ``id`` column.

    Relative paths are relative to the CSV's folder. Returns (id, path, id given by the user).
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [(f or "").strip().lower() for f in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"Cannot read the case list '{csv_path}' ({exc}).", "Give a UTF-8 CSV with id,path columns.") from None
    if "path" not in fields:
        raise InputError(f"The case list '{csv_path}' has no 'path' column (columns: {', '.join(fields) or 'none'}).",
                         "Give a CSV whose header is id,path (id optional).")
    out = []
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            continue
        path = Path(row["path"]).expanduser()
        if not path.is_absolute():
            path = csv_path.parent / path
        given = bool(row.get("id"))
        out.append((row["id"] if given else image_stem(path), path, given))
    return out


def discover_cases(inputs: Iterable[str | Path]) -> list[Case]:
    """Expand the batch inputs into cases, in input order.

    A CSV lists cases; a DICOM series folder is one case; any other folder is expanded into its
    image files and case subfolders; anything else (even a missing or unsupported file) is one
    case, so that its problem is reported for that case instead of stopping the batch.
    """
    raw: list[tuple[str, Path, bool]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file() and path.suffix.lower() == ".csv":
            raw.extend(read_case_list(path))
        elif path.is_dir() and not is_dicom_folder(path):
            found = _expand_folder(path, "", 0)
            if not found:
                raise InputError(f"Folder '{path}' holds no images or DICOM series.",
                                 f"Put {', '.join(IMAGE_SUFFIXES)} files or series folders in it.")
            raw.extend((i, p, False) for i, p in found)
        else:
            raw.append((path.name if path.is_dir() else image_stem(path), path, False))
    return assign_ids(raw)


def assign_ids(raw: Sequence[tuple[str, Path, bool]]) -> list[Case]:
    """Make ids safe and unique. Ids the user chose must already be unique (resume depends on
    them); derived ones get a numeric suffix on collision."""
    # Compared case-insensitively: "Case1" and "case1" are one folder on macOS and Windows.
    given = Counter(safe_id(i).lower() for i, _, g in raw if g)
    dupes = sorted(i for i, n in given.items() if n > 1)
    if dupes:
        raise InputError(f"The case list repeats id(s) {', '.join(dupes[:5])} (after making them folder-safe).",
                         "Give every case a distinct id.")
    taken = set(given)
    cases = []
    for text, path, user_given in raw:
        cid = safe_id(text)
        if not user_given:
            base, n = cid, 2
            while cid.lower() in taken:
                cid, n = f"{base}_{n}", n + 1
            taken.add(cid.lower())
        cases.append(Case(cid, path))
    return cases
