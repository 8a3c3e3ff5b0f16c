"""The body-part window of a decoder learned from painted examples.

A decoder trained on a few painted scans has seen its anatomy at one height of the body only; run
everywhere, it can claim look-alike tissue far from where the anatomy can be. Like every decoder of
a CL-Net model, it is therefore gated by a body-part score window: the scores of the slices its
examples paint (scored by the network the Segmenter will use for this model), widened on each side
by a quarter of that extent and by at least ``MIN_MARGIN`` score units (about 8 cm), because a
painted segment may cover only part of the anatomy and another scan's scores are not that exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..bodypart.ranges import DEFAULT_MARGIN, MIN_ANATOMY_MARGIN, anatomy_window
from .datasets import CaseSpec

log = logging.getLogger(__name__)

#: Twice an anatomy window's usual minimum margin: the examples may show only part of the anatomy.
MIN_MARGIN = 2 * MIN_ANATOMY_MARGIN


def painted_window(scorer, specs: Sequence[CaseSpec], previous: tuple[float, float] | None = None
                   ) -> tuple[float, float] | None:
    """The score window for a decoder taught by ``specs`` (image + binary mask files).

    ``previous``: the window the anatomy had in the base model (a correction), kept inside the new
    one. None when any example's scores are unreliable or no painted slice has a score: that
    decoder is then not gated by position, as before.
    """
    lo, hi = np.inf, -np.inf
    for spec in specs:
        image = sitk.ReadImage(str(spec.image))
        details = scorer.score_details(image)
        if not details.reliable:
            log.warning("%s: body-part scores look unreliable; the new decoder is not gated by position.",
                        spec.image.name)
            return None
        mask = sitk.Resample(sitk.ReadImage(str(spec.label)), image, sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        painted = sitk.GetArrayViewFromImage(sitk.DICOMOrient(mask, "LPS")).any(axis=(1, 2))
        scores = np.asarray(details.cleaned, dtype=float)[painted]
        scores = scores[np.isfinite(scores)]
        if scores.size:
            lo, hi = min(lo, float(scores.min())), max(hi, float(scores.max()))
    if not np.isfinite(lo):
        return None
    window = anatomy_window(lo, hi, margin=DEFAULT_MARGIN, min_margin=MIN_MARGIN)
    if previous is not None:
        window = (min(window[0], previous[0]), max(window[1], previous[1]))
    return (round(window[0], 2), round(window[1], 2))
