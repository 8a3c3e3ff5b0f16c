"""Coarse localisation for anatomy subsets.

When only some anatomies are asked for, a fast-mode pass (the model's coarse spacing, a few tiles)
first finds where they are; the normal-spacing pass then tiles only the box around what it found,
plus :data:`LOCATE_MARGIN_MM`, instead of the whole body slab. For a compact organ such as the liver
that is a fraction of the body's cross-section, so fewer normal-spacing tiles run. Where the coarse
pass finds none of the requested anatomies, the normal pass covers the slab as usual (a small
structure may show only at the finer spacing), so locating never loses an anatomy the coarse pass
missed entirely; one it found only in part is covered as far as the margin reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

#: Added on every side of the box the coarse pass found (about three voxels of the coarse grid
#: of the official model; covers its boundary error and the organ's partial-volume rim).
LOCATE_MARGIN_MM = 20.0


def fit_range(start: int, stop: int, size: int, min_length: int) -> tuple[int, int]:
    """[start, stop) clipped to [0, size), then grown to ``min_length`` (centred, kept inside)."""
    start, stop = max(0, start), min(size, stop)
    want = min(size, int(min_length))
    if stop - start < want:
        start = min(max(0, start - (want - (stop - start)) // 2), size - want)
        stop = start + want
    return start, stop


def labelled_corners(labels: sitk.Image) -> np.ndarray | None:
    """World (x, y, z) corners (8 × 3) of the box around the non-zero voxels of ``labels``
    (voxel edges, not centres); None when every voxel is 0."""
    mask = sitk.GetArrayViewFromImage(labels) != 0
    if not mask.any():
        return None
    edges = []  # z, y, x: first and last labelled index, widened to the voxel edges
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        edges.append((hit[0] - 0.5, hit[-1] + 0.5))
    (z0, z1), (y0, y1), (x0, x1) = edges
    return np.array([labels.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
                     for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])


def tiling_region(corners: np.ndarray, grid: sitk.Image, slab: tuple[int, int], patch_zyx: Sequence[int],
                  margin_mm: float = LOCATE_MARGIN_MM) -> list[tuple[int, int]]:
    """[start, stop) along z, y, x of ``grid`` to tile: the box through ``corners`` plus ``margin_mm``,
    within ``slab`` along z, each axis at least a patch long where the grid allows."""
    index = np.array([grid.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in c)) for c in corners])
    lo, hi = index.min(axis=0), index.max(axis=0)  # x, y, z; voxel i spans [i - 0.5, i + 0.5]
    margin = margin_mm / np.asarray(grid.GetSpacing())
    size = grid.GetSize()
    region = []
    for ax_xyz, patch in zip((2, 1, 0), patch_zyx):
        start = int(np.floor(lo[ax_xyz] - margin[ax_xyz] + 0.5))
        stop = int(np.ceil(hi[ax_xyz] + margin[ax_xyz] - 0.5)) + 1
        if ax_xyz == 2:
            start, stop = max(start, slab[0]), min(stop, slab[1])
            stop = max(stop, start)
        region.append(fit_range(start, stop, size[ax_xyz], patch))
    return region
