"""Compare image grids (size, spacing, origin, direction)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

GRID_TOLERANCE = 1e-4


def grid_differences(a: sitk.Image, b: sitk.Image, tol: float = GRID_TOLERANCE) -> list[str]:
    """Human-readable differences between the grids of ``a`` and ``b`` (empty if they match)."""
    diffs = []
    if a.GetSize() != b.GetSize():
        diffs.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for name, get in (("spacing", "GetSpacing"), ("origin", "GetOrigin"), ("direction", "GetDirection")):
        va, vb = np.array(getattr(a, get)()), np.array(getattr(b, get)())
        if va.shape != vb.shape or not np.allclose(va, vb, rtol=0, atol=tol):
            diffs.append(f"{name} {tuple(np.round(va, 4))} vs {tuple(np.round(vb, 4))}")
    return diffs


def require_same_grid(a: sitk.Image, b: sitk.Image, what_a: str, what_b: str) -> None:
    """Raise :class:`InputError` naming every difference if the grids do not match."""
    diffs = grid_differences(a, b)
    if diffs:
        raise InputError(
            f"The {what_a} and the {what_b} are not on the same voxel grid: {'; '.join(diffs)}.",
            f"Resample the {what_b} onto the {what_a} grid (nearest neighbour for labels) first.",
        )
