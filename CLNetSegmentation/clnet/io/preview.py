"""A quick-look PNG: CT slices with the labels overlaid, view names, orientation letters and a legend.

One image, readable at 100 %: the panels share one mm-to-pixel scale (so sizes compare), are
displayed radiologically (the patient's right on the left of the image), and the legend names every
anatomy that the panels show, with its colour. A short series (its height much less than its width,
e.g. 20 slices) gets three axial slices instead of a coronal panel that would be a thin strip.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog.anatomy import Anatomy
from ..errors import ClnetError
from .atomic import atomic_write
from .geometry import require_same_grid

WINDOW_HU = (-400.0, 600.0)
ALPHA = 0.5
PANEL_MAX_PX = 512  # the longest side of the largest panel
SHORT_SERIES_RATIO = 0.35  # height / width below which the coronal view is replaced by axial slices
_UNKNOWN_COLOR = (255, 255, 0)
_FONT_PX = 14
_PAD = 8
_TEXT = (235, 235, 235)
_MARK = (255, 220, 90)
_BACKGROUND = (0, 0, 0)


@dataclass
class _View:
    title: str
    ct: np.ndarray  # 2D, rows top to bottom as displayed
    labels: np.ndarray
    size_mm: tuple[float, float]  # width, height
    marks: tuple[str, str, str, str]  # left, right, top, bottom


def _font(size: int = _FONT_PX):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _quantile_slices(mask: np.ndarray, qs: Sequence[float]) -> list[int]:
    """Slice indices (axis 0) at the given quantiles of the foreground; of the volume when empty."""
    profile = mask.reshape(mask.shape[0], -1).sum(axis=1).astype(np.float64)
    n = mask.shape[0]
    if profile.sum() == 0:
        return [min(n - 1, int(q * n)) for q in qs]
    cdf = np.cumsum(profile) / profile.sum()
    return [int(min(n - 1, np.searchsorted(cdf, q))) for q in qs]


def _centre(mask: np.ndarray, axis: int) -> int:
    moved = np.moveaxis(mask, axis, 0)
    return _quantile_slices(moved, [0.5])[0]


def _views(ct: np.ndarray, lab: np.ndarray, spacing_xyz, origin_z: float, step_z: float) -> list[_View]:
    """Panels for a volume in LPS index order (z, y, x: column 0 = patient's right, row 0 = anterior)."""
    sx, sy, sz = spacing_xyz
    nz, ny, nx = ct.shape
    fg = lab > 0
    axial_marks = ("R", "L", "A", "P")
    width, height = nx * sx, nz * sz

    def axial(k: int) -> _View:
        return _View(f"Axial, z = {origin_z + k * step_z:.1f} mm", ct[k], lab[k], (nx * sx, ny * sy), axial_marks)

    if height < SHORT_SERIES_RATIO * max(width, ny * sy):
        ks = sorted(set(_quantile_slices(fg, [0.2, 0.5, 0.8])))
        return [axial(k) for k in ks]
    cy = _centre(fg, 1)
    # Coronal: flip so that superior (high z in LPS) is at the top.
    coronal = _View("Coronal", ct[::-1, cy, :], lab[::-1, cy, :], (width, height), ("R", "L", "S", "I"))
    return [axial(_centre(fg, 0)), coronal]


def _color_table(anatomies: Sequence[Anatomy], max_label: int) -> np.ndarray:
    table = np.tile(np.array(_UNKNOWN_COLOR, dtype=np.float32), (max_label + 1, 1))
    for anatomy in anatomies:
        if 0 <= anatomy.label <= max_label:
            table[anatomy.label] = anatomy.color
    return table


def _panel(view: _View, colors: np.ndarray, size_px: tuple[int, int]):
    from PIL import Image

    lo, hi = WINDOW_HU
    grey = np.clip((view.ct.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    grey = np.asarray(Image.fromarray(grey).resize(size_px, Image.Resampling.BILINEAR), dtype=np.float32)
    # Nearest neighbour keeps label borders crisp and values valid.
    lab = np.asarray(Image.fromarray(view.labels.astype(np.int32)).resize(size_px, Image.Resampling.NEAREST))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    fg = lab > 0
    rgb[fg] = (1 - ALPHA) * rgb[fg] + ALPHA * colors[lab[fg]]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _text(draw, xy, text, font, fill=_TEXT, anchor="la") -> None:
    # A dark outline keeps letters readable on bright bone and on coloured labels.
    draw.text(xy, text, font=font, fill=fill, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def _mark(draw, panel_box, marks, font) -> None:
    x0, y0, x1, y1 = panel_box
    left, right, top, bottom = marks
    _text(draw, (x0 + 4, (y0 + y1) // 2), left, font, _MARK, "lm")
    _text(draw, (x1 - 4, (y0 + y1) // 2), right, font, _MARK, "rm")
    _text(draw, ((x0 + x1) // 2, y0 + 3), top, font, _MARK, "ma")
    _text(draw, ((x0 + x1) // 2, y1 - 3), bottom, font, _MARK, "md")


def _legend_layout(names: list[str], font, width: int) -> tuple[int, int, int]:
    """(columns, column width, rows) for the legend entries in ``width`` pixels."""
    swatch = _FONT_PX + 6
    longest = max((font.getlength(n) for n in names), default=0)
    col_w = int(swatch + longest + 2 * _PAD)
    cols = max(1, min(len(names), width // max(col_w, 1)))
    rows = -(-len(names) // cols) if names else 0
    return cols, col_w, rows


def write_preview_png(ct: sitk.Image, labels: sitk.Image, anatomies: Sequence[Anatomy], path: Path) -> None:
    """Write the preview (see the module docstring) for ``labels`` over ``ct`` to ``path``."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise ClnetError(
            "The preview image needs the optional package Pillow.",
            "Install it with `pip install clnet-segmentation[preview]`.",
        ) from None
    require_same_grid(ct, labels, "CT", "label image")
    ct_lps = sitk.DICOMOrient(ct, "LPS")
    lab_lps = sitk.DICOMOrient(labels, "LPS")
    ct_arr = sitk.GetArrayViewFromImage(ct_lps)
    lab_arr = sitk.GetArrayFromImage(lab_lps).astype(np.int64)
    # World z of LPS slice k (for the axial titles); LPS z runs towards the head.
    origin_z = ct_lps.GetOrigin()[2]
    step_z = ct_lps.GetSpacing()[2] * ct_lps.GetDirection()[8]
    views = _views(ct_arr, lab_arr, ct_lps.GetSpacing(), origin_z, step_z)
    colors = _color_table(anatomies, int(lab_arr.max(initial=0)))

    scale = PANEL_MAX_PX / max(max(v.size_mm) for v in views)  # one mm-to-pixel scale for every panel
    panels = [_panel(v, colors, (max(1, round(v.size_mm[0] * scale)), max(1, round(v.size_mm[1] * scale))))
              for v in views]
    font, small = _font(), _font(_FONT_PX - 2)
    title_h = _FONT_PX + 2 * _PAD
    width = sum(p.width for p in panels) + _PAD * (len(panels) + 1)
    panel_h = max(p.height for p in panels)

    by_label = {a.label: a for a in anatomies}
    shown = sorted({int(v) for view in views for v in np.unique(view.labels) if v > 0})
    names = [by_label[v].display_name if v in by_label else f"label {v}" for v in shown]
    hidden = len({a.label for a in anatomies} & set(np.unique(lab_arr).tolist()) - set(shown))
    cols, col_w, rows = _legend_layout(names, small, width - 2 * _PAD)
    width = max(width, cols * col_w + 2 * _PAD)
    row_h = _FONT_PX + 6
    legend_h = (rows + 1) * row_h + 2 * _PAD
    canvas = Image.new("RGB", (width, title_h + _FONT_PX + _PAD + panel_h + legend_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _text(draw, (_PAD, _PAD), "clnet preview: radiological view (the patient's right is on the left)", font)

    x = _PAD
    y = title_h + _FONT_PX + _PAD
    for view, panel in zip(views, panels):
        _text(draw, (x, title_h), view.title, small)
        canvas.paste(panel, (x, y))
        _mark(draw, (x, y, x + panel.width, y + panel.height), view.marks, font)
        x += panel.width + _PAD

    y += panel_h + _PAD
    heading = f"{len(names)} anatomies in these slices" if names else "no anatomy in these slices"
    if hidden:
        heading += f" ({hidden} more elsewhere in the volume)"
    _text(draw, (_PAD, y), heading, small)
    for i, (value, name) in enumerate(zip(shown, names)):
        cx = _PAD + (i % cols) * col_w
        cy = y + row_h * (1 + i // cols)
        color = tuple(int(c) for c in colors[value])
        draw.rectangle((cx, cy + 2, cx + _FONT_PX, cy + 2 + _FONT_PX), fill=color, outline=(255, 255, 255))
        _text(draw, (cx + _FONT_PX + 6, cy + 1), name, small)

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
