"""Body-part regression: a body-position score per axial slice, used to gate CL-Net decoders.

``BodyPartModel.score_slices`` gives each LPS axial slice a score on the bpreg/CL-Net scale (0 = start of
the pelvis, ~40 upper abdomen, ~60-75 thorax, ~100 end of the eyes); ``anatomy_ranges`` and
``decoder_range`` turn labelled scans into per-decoder score windows. ``BpregModel`` is the official
CL-Net release's network (bpreg), imported by ``clnet import-official``; both score the same way
(``score_details``). See docs/bodypart.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .bpreg import BpregModel, BpregSettings
from .bpreg_network import KIND as BPREG_KIND
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


#: The ``kind`` of clnet's own body-part model files in a manifest's ``bodypart`` entry.
CLNET_KIND = "clnet-bodypart"


def load_default() -> BodyPartModel:
    """The bundled demo model."""
    return BodyPartModel.load(DEFAULT_WEIGHTS)


def load_scorer(kind: str, data: bytes, settings: Mapping[str, Any], what: str) -> BodyPartModel | BpregModel:
    """A slice scorer from a (sha256-verified) weight file's bytes, by the ``kind`` a manifest records."""
    if kind == BPREG_KIND:
        return BpregModel.from_bytes(data, settings, what)
    if kind == CLNET_KIND:
        return BodyPartModel.from_bytes(data, what)
    raise ModelError(f"The manifest names a body-part network of unknown kind {kind!r}.",
                     f"This clnet reads {BPREG_KIND!r} and {CLNET_KIND!r}; upgrade clnet.")


__all__ = [
    "BPREG_KIND",
    "CLNET_KIND",
    "BpregModel",
    "BpregSettings",
    "load_scorer",
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
