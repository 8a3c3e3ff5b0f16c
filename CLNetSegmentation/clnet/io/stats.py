"""Per-anatomy volume and intensity statistics."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..catalog.anatomy import Anatomy
from .atomic import atomic_write

STAT_COLUMNS = (
    "label", "name", "display_name", "region", "voxels", "volume_ml",
    "mean_hu", "std_hu", "min_hu", "max_hu",
)  # fmt: skip


def anatomy_statistics(
    labels: np.ndarray, ct: np.ndarray, spacing_xyz: Sequence[float], anatomies: Sequence[Anatomy]
) -> list[dict]:
    """One row per anatomy present in ``labels`` (arrays in z, y, x order), sorted by label.

    Sums are gathered with ``np.bincount`` over the foreground voxels, so the cost is a few
    vectorised passes whatever the number of anatomies.
    """
    if labels.shape != ct.shape:
        raise ValueError(f"labels {labels.shape} and ct {ct.shape} differ in shape")
    mask = labels > 0
    lab = labels[mask].astype(np.intp, copy=False)
    val = ct[mask].astype(np.float64, copy=False)
    if lab.size == 0:
        return []
    n_bins = int(lab.max()) + 1
    counts = np.bincount(lab, minlength=n_bins)
    sums = np.bincount(lab, weights=val, minlength=n_bins)
    safe = np.maximum(counts, 1)
    means = sums / safe
    # Second moment around the mean (not E[x^2]-E[x]^2) to avoid cancellation.
    sq = np.bincount(lab, weights=(val - means[lab]) ** 2, minlength=n_bins)
    stds = np.sqrt(sq / safe)
    mins = np.full(n_bins, np.inf)
    maxs = np.full(n_bins, -np.inf)
    np.minimum.at(mins, lab, val)
    np.maximum.at(maxs, lab, val)

    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    rows = []
    for anatomy in sorted(anatomies, key=lambda a: a.label):
        k = anatomy.label
        if k <= 0 or k >= n_bins or counts[k] == 0:
            continue
        rows.append(
            {
                "label": k,
                "name": anatomy.name,
                "display_name": anatomy.display_name,
                "region": anatomy.region,
                "voxels": int(counts[k]),
                "volume_ml": round(float(counts[k]) * voxel_ml, 3),
                "volume_mm3": round(float(counts[k]) * voxel_ml * 1000.0, 3),
                "mean_hu": round(float(means[k]), 2),
                "std_hu": round(float(stds[k]), 2),
                "min_hu": float(mins[k]),
                "max_hu": float(maxs[k]),
            }
        )
    return rows


def statistics_json(rows: Sequence[dict], anatomies: Sequence[Anatomy], key=lambda a: a.name) -> dict:
    """TotalSegmentator's ``statistics.json`` layout: ``{name: {"volume": mm³, "intensity": mean HU}}``.

    Every anatomy in ``anatomies`` (the requested ones) gets an entry; one that is absent has volume
    and intensity 0.0, as TotalSegmentator writes them. ``key`` gives the entry's name. Unlike
    TotalSegmentator, anatomies touching the image border are not zeroed: their volume is what
    the image holds.
    """
    by_label = {r["label"]: r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for anatomy in sorted(anatomies, key=lambda a: a.label):
        row = by_label.get(anatomy.label)
        out[key(anatomy)] = {"volume": float(row["volume_mm3"]) if row else 0.0,
                             "intensity": float(row["mean_hu"]) if row else 0.0}
    return out


def write_statistics_json(path: Path, stats: dict) -> None:
    """Write :func:`statistics_json`'s result atomically (UTF-8, indent 4 like TotalSegmentator)."""
    text = json.dumps(stats, indent=4) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_statistics_csv(path: Path, rows: Sequence[dict]) -> None:
    """Write statistics rows as CSV (header line + one line per anatomy), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STAT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
