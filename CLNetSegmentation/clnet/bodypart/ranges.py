"""Score ranges: where each anatomy occurs on the body-position scale, and each decoder's window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

#: CL-Net widens an organ decoder's window by a quarter of the largest anatomy extent on each side.
DEFAULT_MARGIN = 0.25
#: An anatomy's own window is widened by at least this much (score units, about 42 mm at 0.12 units
#: per mm) on each side: a small anatomy spans only a few mm, and a new scan's scores are not that exact.
MIN_ANATOMY_MARGIN = 5.0


def anatomy_ranges(scores: np.ndarray, labels_zyx: np.ndarray,
                   label_values: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    """Per anatomy present in ``labels_zyx``: (0.5th, 99.5th percentile) of the scores of its slices.

    ``scores`` has one value per z slice of ``labels_zyx`` (same LPS order). Each slice that shows the
    anatomy counts once, whatever its area, so a range describes the anatomy's z extent. Anatomies
    absent from the labels are left out.
    """
    scores = np.asarray(scores, dtype=float)
    labels_zyx = np.asarray(labels_zyx)
    if labels_zyx.ndim != 3 or labels_zyx.shape[0] != scores.shape[0]:
        raise ValueError(f"labels_zyx {labels_zyx.shape} must be (z, y, x) with z = {scores.shape[0]} slices")
    wanted = {int(v): name for name, v in label_values.items() if int(v) != 0}
    slices: dict[int, list[int]] = {}
    for k in range(labels_zyx.shape[0]):
        plane = labels_zyx[k]
        for v in np.unique(plane[plane != 0]) if plane.any() else ():
            if int(v) in wanted:
                slices.setdefault(int(v), []).append(k)
    out: dict[str, tuple[float, float]] = {}
    for v, ks in slices.items():
        s = scores[np.asarray(ks)]
        s = s[np.isfinite(s)]
        if s.size:
            out[wanted[v]] = (float(np.percentile(s, 0.5)), float(np.percentile(s, 99.5)))
    return out


def decoder_range(anatomy_ranges: Mapping[str, tuple[float, float]], anatomies: Iterable[str],
                  margin: float = DEFAULT_MARGIN) -> tuple[float, float] | None:
    """A decoder's score window: union of its anatomies' ranges, widened by ``margin`` x the largest extent.

    Like CL-Net's organ heads (window = [min p0.5 - m, max p99.5 + m], m = 0.25 x the largest per-class
    extent). Anatomies without a range are ignored; ``None`` when none of them has one (no evidence:
    the caller should then not gate that decoder by position).
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    known = [anatomy_ranges[a] for a in anatomies if a in anatomy_ranges]
    if not known:
        return None
    lo = min(r[0] for r in known)
    hi = max(r[1] for r in known)
    pad = margin * max(r[1] - r[0] for r in known)
    return (float(lo - pad), float(hi + pad))


def anatomy_window(lo: float, hi: float, extent: float | None = None, margin: float = DEFAULT_MARGIN,
                   min_margin: float = MIN_ANATOMY_MARGIN) -> tuple[float, float]:
    """One anatomy's score window: its range widened by ``margin`` × its extent (``hi - lo`` unless
    given, e.g. the official mean per-case extent), and by at least ``min_margin``, on each side."""
    if margin < 0 or min_margin < 0:
        raise ValueError("margins must be >= 0")
    pad = max(margin * float(hi - lo if extent is None else extent), min_margin)
    return (float(lo - pad), float(hi + pad))


def anatomy_windows(ranges: Mapping[str, tuple[float, float]], margin: float = DEFAULT_MARGIN,
                    min_margin: float = MIN_ANATOMY_MARGIN) -> dict[str, tuple[float, float]]:
    """:func:`anatomy_window` for every anatomy of :func:`anatomy_ranges`' result (for a model
    manifest's ``anatomy_bodypart_ranges``)."""
    return {a: anatomy_window(lo, hi, None, margin, min_margin) for a, (lo, hi) in ranges.items()}


def slices_in_window(scores: np.ndarray, window: tuple[float, float] | None) -> tuple[int, int] | None:
    """[first, last + 1) of the slices whose score lies in ``window`` (all slices when it is None).

    Returns None when no slice qualifies: that decoder cannot apply anywhere in the image.
    """
    scores = np.asarray(scores, dtype=float)
    if window is None:
        return (0, int(scores.size))
    inside = np.nonzero((scores >= window[0]) & (scores <= window[1]))[0]
    if inside.size == 0:
        return None
    return (int(inside[0]), int(inside[-1]) + 1)
