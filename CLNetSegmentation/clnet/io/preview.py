"""A quick-look PNG: axial and coronal CT slices with the labels overlaid."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog.anatomy import Anatomy
from ..errors import ClnetError
from .atomic import atomic_write
from .geometry import require_same_grid

WINDOW_HU = (-400.0, 600.0)
ALPHA = 0.5
PANEL_MAX_PX = 512
_UNKNOWN_COLOR = (255, 255, 0)


def _centre_of_mass(mask: np.ndarray) -> tuple[int, int, int]:
    """Foreground centre (z, y, x index); the volume centre when there is no foreground."""
    total = int(mask.sum())
    if total == 0:
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    centre = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = mask.sum(axis=other)
        centre.append(int(round(float(np.dot(np.arange(mask.shape[axis]), profile)) / total)))
    return tuple(centre)  # type: ignore[return-value]


def _color_table(anatomies: Sequence[Anatomy], max_label: int) -> np.ndarray:
    table = np.tile(np.array(_UNKNOWN_COLOR, dtype=np.float32), (max_label + 1, 1))
    for anatomy in anatomies:
        if 0 <= anatomy.label <= max_label:
            table[anatomy.label] = anatomy.color
    return table


def _panel(ct2d: np.ndarray, lab2d: np.ndarray, colors: np.ndarray, size_px: tuple[int, int]):
    from PIL import Image

    lo, hi = WINDOW_HU
    grey = np.clip((ct2d.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    grey = np.asarray(Image.fromarray(grey).resize(size_px, Image.Resampling.BILINEAR), dtype=np.float32)
    # Nearest neighbour keeps label borders crisp and values valid.
    lab = np.asarray(Image.fromarray(lab2d.astype(np.int32)).resize(size_px, Image.Resampling.NEAREST))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    fg = lab > 0
    rgb[fg] = (1 - ALPHA) * rgb[fg] + ALPHA * colors[lab[fg]]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def write_preview_png(ct: sitk.Image, labels: sitk.Image, anatomies: Sequence[Anatomy], path: Path) -> None:
    """Write axial + coronal slices through the foreground's centre, in radiological orientation."""
    try:
        from PIL import Image
    except ImportError:
        raise ClnetError(
            "The preview image needs the optional package Pillow.",
            "Install it with `pip install clnet-segmentation[preview]`.",
        ) from None
    require_same_grid(ct, labels, "CT", "label image")
    # In LPS index order, column 0 is the patient's right and row 0 anterior: radiological display.
    ct_lps = sitk.DICOMOrient(ct, "LPS")
    lab_lps = sitk.DICOMOrient(labels, "LPS")
    ct_arr = sitk.GetArrayViewFromImage(ct_lps)
    lab_arr = sitk.GetArrayFromImage(lab_lps).astype(np.int64)
    sx, sy, sz = ct_lps.GetSpacing()
    nz, ny, nx = ct_arr.shape
    cz, cy, _ = _centre_of_mass(lab_arr > 0)
    colors = _color_table(anatomies, int(lab_arr.max(initial=0)))

    # One mm-to-pixel scale for both panels keeps their physical proportions comparable.
    scale = PANEL_MAX_PX / max(nx * sx, ny * sy, nz * sz)
    axial_px = (max(1, round(nx * sx * scale)), max(1, round(ny * sy * scale)))
    coronal_px = (max(1, round(nx * sx * scale)), max(1, round(nz * sz * scale)))
    axial = _panel(ct_arr[cz], lab_arr[cz], colors, axial_px)
    # Flip so that superior (high z) is at the top.
    coronal = _panel(ct_arr[::-1, cy, :], lab_arr[::-1, cy, :], colors, coronal_px)

    gap = 4
    canvas = Image.new("RGB", (axial.width + gap + coronal.width, max(axial.height, coronal.height)))
    canvas.paste(axial, (0, 0))
    canvas.paste(coronal, (axial.width + gap, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
