"""bpreg's score post-processing, plus the NaN gap filling official CL-Net applies to its output.

From the raw network output of a scan's slices (index order) to the scores the official pipeline
gates by, re-implemented from the published behaviour (checked against bpreg by
``benchmarks/bpr_parity.py``):

1. **Landmark transform.** score = (raw - raw(start landmark)) × 100 / (raw(end) - raw(start)), with
   the landmarks' mean raw scores from the release's look-up table (``inference-settings.json``:
   ``pelvis_start`` → 0, ``eyes_end`` → 100). These are bpreg's "unprocessed slice scores".
2. **Background slices.** A raw score that rounds (2 decimals) to one of bpreg's known empty-slice
   outputs is dropped (NaN).
3. **Smoothing.** A Gaussian of 10 mm over the remaining scores (in slice order, NaNs skipped).
4. **Outlier tails.** Where the slope between neighbours (units per mm) leaves the release's
   tangential-slope quantiles, beyond the slices closest to 0 and to 100 (each only if within 10 units),
   the tail of the scan up to / from that slice is dropped (NaN).
5. **Fit.** A straight line through the kept scores against z in mm gives the observed slope; its
   ratio to the expected slope flags a wrong z-spacing, a negative slope a reversed z order.
6. **Gap filling (CL-Net).** Dropped slices are extrapolated with the mean difference between
   neighbouring slices, forward then backward, so every slice has a score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

#: bpreg's raw outputs of empty slices (``Scores.background_scores``).
BACKGROUND_SCORES = (110.83, 6.14, 108.92, 6.22)


@dataclass(frozen=True)
class ScoreProcessing:
    """The settings of steps 1-5 (from the release's ``inference-settings.json`` and bpreg's defaults)."""

    transform_min: float  # raw score of the start landmark (→ 0)
    transform_max: float  # raw score of the end landmark (→ 100)
    slope_mean: float  # expected score units per mm
    tangential_slope_min: float
    tangential_slope_max: float
    smoothing_sigma_mm: float = 10.0
    background_scores: tuple[float, ...] = BACKGROUND_SCORES
    r_slope_threshold: float = 0.28
    scale: float = 100.0

    def to_dict(self) -> dict[str, Any]:
        return {"transform_min": self.transform_min, "transform_max": self.transform_max,
                "slope_mean": self.slope_mean, "tangential_slope_min": self.tangential_slope_min,
                "tangential_slope_max": self.tangential_slope_max, "smoothing_sigma_mm": self.smoothing_sigma_mm,
                "background_scores": list(self.background_scores), "r_slope_threshold": self.r_slope_threshold,
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreProcessing:
        return cls(transform_min=float(d["transform_min"]), transform_max=float(d["transform_max"]),
                   slope_mean=float(d["slope_mean"]), tangential_slope_min=float(d["tangential_slope_min"]),
                   tangential_slope_max=float(d["tangential_slope_max"]),
                   smoothing_sigma_mm=float(d.get("smoothing_sigma_mm", 10.0)),
                   background_scores=tuple(float(v) for v in d.get("background_scores", BACKGROUND_SCORES)),
                   r_slope_threshold=float(d.get("r_slope_threshold", 0.28)), scale=float(d.get("scale", 100.0)))


@dataclass
class ProcessedScores:
    """bpreg's per-scan result (its JSON keys in the comments) and CL-Net's filled scores."""

    z: np.ndarray  # "z": slice index × z-spacing (mm)
    unprocessed: np.ndarray  # "unprocessed slice scores"
    cleaned: np.ndarray  # "cleaned slice scores" (NaN where dropped)
    filled: np.ndarray  # CL-Net's "_bpr_cleaned.json": NaN gaps filled
    slope: float  # "observed slope" (units per mm), NaN with fewer than 2 kept slices
    intercept: float
    slope_ratio: float  # "slope ratio" = |slope| / expected slope
    valid_z_spacing: bool
    reverse_z_ordering: bool
    dropped: int  # slices set to NaN by steps 2 and 4
    boundaries: dict[str, float] = field(default_factory=dict)


def landmark_transform(raw: np.ndarray, p: ScoreProcessing) -> np.ndarray:
    """Step 1: raw network output → the 0 (start landmark) to 100 (end landmark) scale."""
    return (np.asarray(raw, dtype=float) - p.transform_min) * p.scale / (p.transform_max - p.transform_min)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line; NaN with fewer than two points."""
    if len(x) < 2:
        return float("nan"), float("nan")
    design = np.stack([np.ones(len(x)), np.asarray(x, dtype=float)], axis=1)
    intercept, slope = np.linalg.solve(design.T @ design, design.T @ np.asarray(y, dtype=float))
    return float(slope), float(intercept)


def _nearest(values: np.ndarray, target: float, within: float = 10.0) -> float:
    """Index of the finite value nearest ``target`` if it is within ``within`` units, else NaN."""
    dist = np.abs(values - target)
    if not np.isfinite(dist).any() or np.nanmin(dist) >= within:
        return float("nan")
    return float(np.nanargmin(dist))


def _drop_outlier_tails(x: np.ndarray, z_spacing: float, rising: bool, lo_idx: float, hi_idx: float,
                        p: ScoreProcessing) -> np.ndarray:
    """Step 4 (in place): NaN out the scan's tails whose local slope is implausible."""
    if len(x) < 2:
        return x
    diffs = np.diff(x)
    slopes = np.append(diffs, diffs[-1]) / z_spacing
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero((slopes < p.tangential_slope_min) | (slopes > p.tangential_slope_max))
    # Below the start boundary / above the end one, in the scan's own direction (comparisons with a
    # missing boundary select nothing).
    first, last = (lo_idx, hi_idx) if rising else (hi_idx, lo_idx)
    left = bad[bad < first] if np.isfinite(first) else bad[:0]
    right = bad[bad > last] if np.isfinite(last) else bad[:0]
    if left.size:
        x[: int(left.max())] = np.nan
    if right.size:
        x[int(right.min()):] = np.nan
    return x


def fill_gaps(scores: np.ndarray) -> np.ndarray:
    """CL-Net's filling: NaNs after a score continue it by the mean slice-to-slice difference, then NaNs
    before one are extrapolated backwards the same way (all NaN stays all NaN)."""
    out = np.array(scores, dtype=float)
    if out.size < 2 or not np.isfinite(out).any():
        return out
    with np.errstate(invalid="ignore"):
        d = np.diff(out)
    step = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
    for i in range(1, out.size):
        if np.isnan(out[i]) and not np.isnan(out[i - 1]):
            out[i] = out[i - 1] + step
    for i in range(out.size - 2, -1, -1):
        if np.isnan(out[i]) and not np.isnan(out[i + 1]):
            out[i] = out[i + 1] - step
    return out


def process_scores(raw: np.ndarray, z_spacing: float, p: ScoreProcessing) -> ProcessedScores:
    """Steps 1-6 on the raw scores of one scan's slices (in slice order)."""
    raw = np.asarray(raw, dtype=float)
    n = raw.size
    unprocessed = landmark_transform(raw, p)
    a_unprocessed, _ = _line(np.arange(n, dtype=float), unprocessed)

    kept = raw.copy()
    rounded = np.round(kept, 2)
    for background in p.background_scores:
        kept[rounded == background] = np.nan
    values = landmark_transform(kept, p)
    finite = ~np.isnan(values)
    if finite.any():
        values[finite] = gaussian_filter(values[finite], sigma=p.smoothing_sigma_mm / z_spacing)
    lo_idx, hi_idx = _nearest(values, 0.0), _nearest(values, p.scale)
    if lo_idx > hi_idx:  # NaN compares False: a missing boundary never clears the other
        lo_idx = float("nan")
    values = _drop_outlier_tails(values, z_spacing, bool(a_unprocessed > 0), lo_idx, hi_idx, p)

    z = np.arange(n, dtype=float) * z_spacing
    keep = ~np.isnan(values)
    slope, intercept = _line(z[keep], values[keep])
    ratio = abs(slope) / p.slope_mean
    return ProcessedScores(
        z=z, unprocessed=unprocessed, cleaned=values, filled=fill_gaps(values), slope=slope, intercept=intercept,
        slope_ratio=ratio, valid_z_spacing=bool(np.isfinite(ratio) and abs(1 - ratio) <= p.r_slope_threshold),
        reverse_z_ordering=bool(slope < 0), dropped=int((~keep).sum()),
        boundaries={"start_index": lo_idx, "end_index": hi_idx},
    )
