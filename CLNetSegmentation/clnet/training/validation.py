"""A held-out (image, segmentation, segment) for ``clnet add-decoder --validate``: never trained on,
scored with the new decoder alone on the model grid (the engine's own sliding window)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..catalog import Catalog
from ..errors import ClnetError
from ..manifest import Preprocessing
from .common import pad_value
from .datasets import PreparedCase, catalog_labels, prepare_cases
from .evaluation import dice_per_anatomy
from .pairs import pair_cases


@dataclass
class HeldOut:
    """The prepared held-out scan, what the manifest records about it, and how to score it."""

    case: PreparedCase
    names: list[str]
    labels: list[int]
    prep: Preprocessing
    record_: dict

    def dice(self, network, decoder: str, device: torch.device) -> float:
        """Dice of ``decoder`` on the held-out scan (pooled over its anatomies; the pairs teach one)."""
        p = self.prep
        scores = dice_per_anatomy(network, decoder, self.names, self.labels, [self.case], p.patch_size_zyx,
                                  p.overlap, pad_value(p), device)
        return round(float(np.mean(list(scores.values()))), 4) if scores else 0.0

    def record(self, dice: float) -> dict:
        """The manifest's ``info.validation``: file names, sha256, segment and the final Dice."""
        return {**self.record_, "dice": dice, "grid": "model grid (spacing " +
                " × ".join(f"{s:g}" for s in self.prep.spacing_zyx) + " mm)"}


def prepare_held_out(triple: Sequence[str], names: Sequence[str], training: Sequence[dict], prep: Preprocessing,
                     work: Path, catalog: Catalog) -> HeldOut:
    """Read and resample the held-out triple; refuse one that is also a training pair."""
    if len(triple) != 3:
        raise ClnetError(f"--validate needs IMAGE SEGMENTATION SEGMENT, got {list(triple)}.")
    if len(names) != 1:
        raise ClnetError(f"--validate scores one anatomy, but the decoder has {len(names)}.",
                         "Learn one anatomy per decoder when validating on a held-out pair.")
    image, seg = Path(triple[0]), Path(triple[1])
    for what, f in (("image", image), ("segmentation", seg)):
        if not f.is_file():
            raise ClnetError(f"--validate {what} {f} does not exist.",
                             "Give an existing CT and segmentation for the held-out pair, or leave out --validate.")
    [spec], [record] = pair_cases([triple], names[0], work / "validate")
    spec.case_id = "validate"
    same = ("image_sha256", "segmentation_sha256", "segment")
    if any(all(r.get(k) == record[k] for k in same) for r in training):
        raise ClnetError("The --validate pair is also a training --pair: its Dice would say nothing.",
                         "Hold out a scan (or segmentation) that is not used for training.")
    [case] = prepare_cases([spec], prep, cache_dir=work / "cache", catalog=catalog)
    labels = catalog_labels(names, catalog)
    if not np.isin(case.labels, labels).any():
        raise ClnetError(f"The --validate segment {triple[2]!r} does not overlap {image.name}.",
                         "Pair the held-out segmentation with the CT it was painted on.")
    return HeldOut(case, list(names), list(labels), prep, record)
