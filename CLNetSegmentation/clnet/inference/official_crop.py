"""The official CL-Net pipeline's body crop, for official-compatible inference.

The official pipeline (``bm_coarse_gen``, ``crop_to_body_mask``, ``reshape_bbox``) builds a body
mask slice by slice: HU above −200, a 2-D opening with a 7×7 square, the largest 4-connected
component (holes filled, which cannot change its box). Slices outside the head's body-part range are
cleared; the box around what is left is grown (centred) to at least the plans' patch size, then by a
quarter of that patch on every side, with the patch size counted in voxels of the *input* image. The
arithmetic of that growth is reproduced as written, including its quirk where the box would start
before the first slice (it then ends further out than the patch size asks).

Memory: the mask is made a slab of slices at a time, keeping only each slice's box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .preprocessing import Geometry

#: The official body mask's threshold (HU) and the side of its opening's square (7×7: a 3×3 square
#: iterated three times).
OFFICIAL_BODY_HU = -200.0
OPENING_SIDE = 7
#: Slices of mask made at once.
SLAB_SLICES = 16

_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a slice, never across


def slice_boxes(volume_zyx: np.ndarray, threshold_hu: float = OFFICIAL_BODY_HU) -> np.ndarray:
    """Per axial slice, the box [y0, y1, x0, x1) of the largest 4-connected component of the opened
    body mask (rows of −1 where a slice has none). ``volume_zyx`` may be a view: read a slab at a time."""
    boxes = np.full((volume_zyx.shape[0], 4), -1, dtype=np.int64)
    for z0 in range(0, volume_zyx.shape[0], SLAB_SLICES):
        mask = np.asarray(volume_zyx[z0 : z0 + SLAB_SLICES] > threshold_hu).view(np.uint8)
        # Erosion then dilation by a square (outside the image counts as background), one axis at a
        # time: the same as scipy's binary_erosion / binary_dilation with the 7×7 square.
        for op in (ndimage.minimum_filter1d, ndimage.maximum_filter1d):
            for axis in (1, 2):
                mask = op(mask, OPENING_SIDE, axis=axis, mode="constant", cval=0)
        labels, n = ndimage.label(mask, structure=_IN_PLANE_4)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        best: dict[int, int] = {}  # slice → its largest component (the first one found on a tie)
        for label, found in enumerate(ndimage.find_objects(labels), start=1):
            z = found[0].start
            if z not in best or sizes[label] > sizes[best[z]]:
                best[z] = label
        objects = ndimage.find_objects(labels)
        for z, label in best.items():
            _, ys, xs = objects[label - 1]
            boxes[z0 + z] = (ys.start, ys.stop, xs.start, xs.stop)
    return boxes


def grow_box(box: Sequence[Sequence[int]], size: Sequence[int], patch: Sequence[int]) -> list[list[int]]:
    """The official ``reshape_bbox``: each axis [lo, hi) grown (centred) to at least ``patch`` voxels,
    then by int(patch / 4) on both sides, kept inside [0, size)."""
    out = [list(b) for b in box]
    for axis, (lo_hi, img_s, patch_s) in enumerate(zip(out, size, patch)):
        lo, hi = lo_hi
        if hi - lo < patch_s:
            center = lo + (hi - lo) / 2
            upper, lower = int(center + patch_s / 2), int(center - patch_s / 2)
            remain_upper, remain_lower = img_s - upper - 1, lower
            if remain_upper < 0:
                upper = img_s
                lower = remain_lower + remain_upper if remain_lower + remain_upper > 0 else 0
            if remain_lower < 0:
                lower = 0
                upper = remain_upper - remain_lower if remain_upper - remain_lower > 0 else img_s
            lo, hi = lower, upper
        out[axis] = [max(0, lo - int(patch_s / 4)), min(img_s, hi + int(patch_s / 4))]
    return out


def official_body_box(volume_zyx: np.ndarray, patch_zyx: Sequence[int],
                      keep_slices: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Index box (x, y, z start and size) the official pipeline crops ``volume_zyx`` (oriented, LPS) to.

    ``keep_slices``: the slices the body-part range leaves (None: all). Where no kept slice holds
    any body the whole volume is returned (the official code stops with an error there)."""
    boxes = slice_boxes(volume_zyx)
    has = boxes[:, 0] >= 0
    if keep_slices is not None:
        has &= np.asarray(keep_slices, dtype=bool)
    size_zyx = list(volume_zyx.shape)
    if not has.any():
        return [0, 0, 0], size_zyx[::-1]
    zs = np.flatnonzero(has)
    chosen = boxes[has]
    box = [[int(zs[0]), int(zs[-1]) + 1], [int(chosen[:, 0].min()), int(chosen[:, 1].max())],
           [int(chosen[:, 2].min()), int(chosen[:, 3].max())]]
    grown = grow_box(box, size_zyx, [int(p) for p in patch_zyx])
    start_zyx = [lo for lo, _ in grown]
    extent_zyx = [hi - lo for lo, hi in grown]
    return start_zyx[::-1], extent_zyx[::-1]


def gated_slices(geometry: Geometry, z_mm: np.ndarray, scores: np.ndarray,
                 windows: Mapping[str, tuple[float, float] | None], decoders: Sequence[str]) -> np.ndarray | None:
    """The axial slices of the oriented image ``geometry`` the official crop keeps for ``decoders``
    (None: all, when a decoder has no window). Per decoder, as officially per head: from the first to
    one past the last slice whose score is inside its window (the official code clears the slices
    before ``first`` and after ``last + 1``, so it keeps one slice more than its range says)."""
    if any(windows.get(d) is None for d in decoders):
        return None
    depth = geometry.size[2]
    centre = [(geometry.size[0] - 1) / 2, (geometry.size[1] - 1) / 2]
    slice_z = np.array([geometry.point([*centre, k])[2] for k in range(depth)])
    slice_scores = np.interp(slice_z, z_mm, scores)
    keep = np.zeros(depth, dtype=bool)
    for d in decoders:
        lo, hi = windows[d]  # type: ignore[misc]
        hits = np.flatnonzero((slice_scores >= lo) & (slice_scores <= hi))
        if hits.size:
            keep[hits[0] : hits[-1] + 2] = True
    return keep
