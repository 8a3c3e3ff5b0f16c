"""Body-part regression: a body-position score per axial slice, used to gate CL-Net decoders.

``BodyPartModel.score_slices`` gives each LPS axial slice a score on the bpreg/CL-Net scale (0 = start of
the pelvis, ~40 upper abdomen, ~60-75 thorax, ~100 end of the eyes); ``anatomy_ranges`` and
``decoder_range`` turn labelled scans into per-decoder score windows. See docs/bodypart.md.
"""

from __future__ import annotations

from pathlib import Path

from .model import (
    LANDMARK_SCORES,
    SLOPE_UNITS_PER_MM,
    BodyPartConfig,
    BodyPartModel,
    SliceScores,
    clean_scores,
    score_world_z,
)
from .ranges import (
    DEFAULT_MARGIN,
    MIN_ANATOMY_MARGIN,
    anatomy_ranges,
    anatomy_window,
    anatomy_windows,
    decoder_range,
    slices_in_window,
)
from .train import landmarks_from_labels, train_bodypart

#: The demo model shipped with the package (trained on one abdomen/pelvis CT; see its metadata).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "bpr_demo.safetensors"


def load_default() -> BodyPartModel:
    """The bundled demo model."""
    return BodyPartModel.load(DEFAULT_WEIGHTS)


__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_WEIGHTS",
    "LANDMARK_SCORES",
    "SLOPE_UNITS_PER_MM",
    "BodyPartConfig",
    "BodyPartModel",
    "SliceScores",
    "MIN_ANATOMY_MARGIN",
    "anatomy_ranges",
    "anatomy_window",
    "anatomy_windows",
    "clean_scores",
    "decoder_range",
    "landmarks_from_labels",
    "load_default",
    "score_world_z",
    "slices_in_window",
    "train_bodypart",
]
