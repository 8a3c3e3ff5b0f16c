"""Cheap sanity checks on a CT volume before any heavy work."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, Setting

MIN_VOXELS_PER_AXIS = 8
MAX_SPACING_MM = 20.0
_SAMPLE_VOXELS = 2_000_000
# A CT contains air (about -1000 HU) around or inside the body; the 1st percentile finds it
# even in a tight field of view, while MR and un-rescaled raw values never get this low.
_AIR_PERCENTILE_MAX_HU = -500.0
_MIN_RANGE_HU = 500.0
_COARSE_SLICE_MM = 5.0
FORCE = Setting("--force", "force=True")


def _strided_sample(array: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((array.size / _SAMPLE_VOXELS) ** (1 / 3))))
    return array[::step, ::step, ::step]


def validate_ct(image: sitk.Image, force: bool = False) -> list[str]:
    """Check that ``image`` is a usable CT volume in HU; return warnings, raise :class:`InputError`.

    ``force`` turns the "does not look like CT" error into a warning (for unusual CTs).
    """
    warnings: list[str] = []
    size = image.GetSize()
    if image.GetNumberOfPixels() == 0:
        raise InputError("The image is empty (0 voxels).", "Check the input file; it holds no image data.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"Expected a 3D scalar CT image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s).",
            "Provide one grey-value CT volume.",
        )
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"The image is too small ({'x'.join(map(str, size))} voxels); every axis needs at least "
            f"{MIN_VOXELS_PER_AXIS} voxels.",
            "Provide the full CT volume, not a crop of a few slices.",
        )
    spacing = image.GetSpacing()
    if any(not np.isfinite(s) or s <= 0 or s > MAX_SPACING_MM for s in spacing):
        raise InputError(
            f"Voxel spacing {tuple(round(s, 4) for s in spacing)} mm is not plausible "
            f"(each axis must be > 0 and <= {MAX_SPACING_MM:g} mm).",
            "Fix the image header (spacing) or re-export the image.",
        )
    if max(spacing) > _COARSE_SLICE_MM:
        warnings.append(f"Coarse voxel spacing ({max(spacing):.1f} mm); segmentations will be less accurate.")

    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        # A few slices at a time: a whole-volume boolean mask would be another 1 B per voxel.
        step = max(1, (16 << 20) // max(1, array[0].size))
        bad = sum(int(np.count_nonzero(~np.isfinite(array[z : z + step]))) for z in range(0, array.shape[0], step))
        if bad:
            raise InputError(
                f"The image has {bad:,} NaN or infinite voxels.",
                "Replace them (e.g. with -1024 HU) or re-export the image.",
            )
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise InputError(
            f"The image is constant (every voxel is {lo:g}); there is nothing to segment.",
            "Check that the right file was exported.",
        )

    p1, p99 = (float(v) for v in np.percentile(_strided_sample(array), [1, 99]))
    if p1 > _AIR_PERCENTILE_MAX_HU or p99 - p1 <= _MIN_RANGE_HU:
        message = (
            f"The image does not look like a CT in Hounsfield units (1st-99th percentile {p1:.0f}..{p99:.0f}; "
            "a CT has air near -1000 HU); it may be an MR or unscaled data."
        )
        if not force:
            raise InputError(message, "If it really is a CT in HU, pass {force} to segment it anyway.",
                             settings={"force": FORCE})
        warnings.append(message + " Segmenting it anyway, as forced.")
    return warnings
