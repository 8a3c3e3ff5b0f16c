"""Overlap and surface-distance metrics between a predicted and a reference label map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .geometry import require_same_grid


def _label_array(image: sitk.Image, what: str) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image).ravel()
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"The {what} is not an integer label map ({array.dtype}).", "Pass a label image.")
    if array.size and array.min() < 0:
        raise InputError(f"The {what} has negative label values.", "Pass a label map with labels >= 0.")
    return array.astype(np.intp, copy=False)


def dice_per_label(
    pred: sitk.Image, ref: sitk.Image, labels: Sequence[int] | None = None
) -> dict[int, float]:
    """Dice coefficient per label value.

    ``labels=None`` evaluates every non-zero label found in either image. A label absent from both
    images is skipped; one absent from only one image scores 0.0.
    """
    require_same_grid(ref, pred, "reference", "prediction")
    p = _label_array(pred, "prediction")
    r = _label_array(ref, "reference")
    n_bins = int(max(p.max(initial=0), r.max(initial=0))) + 1
    pred_counts = np.bincount(p, minlength=n_bins)
    ref_counts = np.bincount(r, minlength=n_bins)
    overlap = np.bincount(p[p == r], minlength=n_bins)
    if labels is None:
        wanted = [int(k) for k in np.nonzero(pred_counts + ref_counts)[0] if k != 0]
    else:
        wanted = [int(k) for k in labels]
    result: dict[int, float] = {}
    for k in wanted:
        total = int(pred_counts[k] + ref_counts[k]) if 0 <= k < n_bins else 0
        if total:
            result[k] = 2.0 * float(overlap[k]) / total
    return result


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, grown by one voxel where the array allows."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        slices.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, mask.shape[axis])))
    return tuple(slices)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the image edge counts as outside)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float] | None:
    """``(hd95, msd)`` in mm between two boolean masks, or None when either mask is empty.

    The surface of a mask is its voxels with a face neighbour outside it. For every surface voxel
    of one mask the Euclidean distance (on the physical ``spacing_zyx``) to the nearest surface voxel
    of the other is taken, in both directions. ``hd95`` is the larger of the two directions' 95th
    percentiles (linear interpolation), ``msd`` the mean over both directions' distances together:
    the definitions of MONAI's ``compute_hausdorff_distance(percentile=95)`` and
    ``compute_average_surface_distance(symmetric=True)``. Identical masks give (0, 0).
    """
    from scipy import ndimage

    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    if not pred.any() or not ref.any():
        return None
    box = _bounding_box(pred | ref)
    p_surface, r_surface = _surface(pred[box]), _surface(ref[box])
    # Distance of every voxel to the other mask's surface; the box holds both surfaces, so a nearest
    # surface voxel is never cut off.
    to_ref = ndimage.distance_transform_edt(~r_surface, sampling=spacing_zyx)
    to_pred = ndimage.distance_transform_edt(~p_surface, sampling=spacing_zyx)
    forward, backward = to_ref[p_surface], to_pred[r_surface]
    hd95 = max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))
    msd = float(np.concatenate([forward, backward]).mean())
    return hd95, msd
