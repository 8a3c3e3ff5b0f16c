"""Overlap metrics between a predicted and a reference label map."""

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
