"""Patch sampling and augmentation with MONAI transforms.

Patches are cropped around foreground (voxels of the anatomies being trained) with probability
``fg_fraction`` and anywhere else otherwise (``RandCropByPosNegLabeld`` with foreground/background
indices computed once per scan). Volumes smaller than the patch are padded with the normalised value
of air, like the inference tiles. Augmentation is deliberately light: small rotations and scaling,
intensity jitter; flips are off by default because left/right anatomies would swap sides.

Randomness is re-seeded from (seed, rank, step) before every batch, so a resumed run draws exactly
the patches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms.utils import map_binary_to_indices

from .datasets import LABEL_TABLE_SIZE, PreparedCase


@dataclass
class AugmentConfig:
    """Augmentation strengths (0 disables one). Angles in degrees, scale as a ± fraction."""

    rotate_deg: float = 10.0
    scale: float = 0.1
    affine_prob: float = 0.2
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 0.3
    noise_std: float = 0.0
    flip_axes: tuple[int, ...] = ()  # spatial axes (0=z, 1=y, 2=x); x flips swap left and right!

    def to_dict(self) -> dict:
        return {**self.__dict__, "flip_axes": list(self.flip_axes)}


def _pad_to(arr: np.ndarray, patch: Sequence[int], value: float) -> np.ndarray:
    pad = [(0, max(0, p - s)) for s, p in zip(arr.shape, patch)]
    return np.pad(arr, pad, constant_values=value) if any(p[1] for p in pad) else arr


def build_augment(aug: AugmentConfig) -> list:
    """The augmentation transforms (dictionary keys ``image`` and ``label``)."""
    t: list = []
    if aug.affine_prob > 0 and (aug.rotate_deg > 0 or aug.scale > 0):
        r = math.radians(aug.rotate_deg)
        t.append(RandAffined(keys=["image", "label"], prob=aug.affine_prob, rotate_range=(r, r, r),
                             scale_range=(aug.scale,) * 3, mode=("bilinear", "nearest"), padding_mode="border"))
    if aug.intensity_prob > 0 and aug.intensity_scale > 0:
        t.append(RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=aug.intensity_prob))
    if aug.intensity_prob > 0 and aug.intensity_shift > 0:
        t.append(RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=aug.intensity_prob))
    if aug.noise_std > 0:
        t.append(RandGaussianNoised(keys="image", prob=0.1, std=aug.noise_std))
    for ax in aug.flip_axes:
        t.append(RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=int(ax)))
    return t


class PatchSampler:
    """Draws (image, label) patch batches from prepared scans.

    Labels stay catalog label values; each decoder maps them to its classes afterwards, so one
    patch can train several decoders at once.
    """

    def __init__(self, cases: Sequence[PreparedCase], foreground_labels: Sequence[int], patch: Sequence[int],
                 pad_value: float, fg_fraction: float = 0.5, augment: AugmentConfig | None = None,
                 seed: int = 0, rank: int = 0) -> None:
        if not cases:
            raise ValueError("no scans to sample from")
        self.patch = tuple(int(p) for p in patch)
        self.seed, self.rank = int(seed), int(rank)
        fg_lut = np.zeros(LABEL_TABLE_SIZE, dtype=bool)
        fg_lut[list(foreground_labels)] = True
        self.items = []
        for c in cases:
            img = _pad_to(c.image, self.patch, pad_value)
            lab = _pad_to(c.labels, self.patch, 0)
            # MONAI reduces the first axis as a channel axis: without [None] the indices would be
            # those of a (y, x) projection, unravelled as if they were (z, y, x) ones.
            fg, bg = map_binary_to_indices(torch.from_numpy(fg_lut[lab])[None], None, 0)
            self.items.append({"image": img[None], "label": lab[None], "fg": fg, "bg": bg})
        pos = max(0.0, min(1.0, fg_fraction))
        crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=self.patch,
                                      pos=pos, neg=1.0 - pos, num_samples=1, fg_indices_key="fg",
                                      bg_indices_key="bg", allow_smaller=False)
        self.transform = Compose([crop, *build_augment(augment or AugmentConfig())])

    def sample(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Batch for ``step``: image (B, 1, z, y, x) float32, labels (B, z, y, x) int16, case indices."""
        rng = np.random.default_rng([self.seed, self.rank, int(step)])
        self.transform.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        idx = [int(i) for i in rng.integers(0, len(self.items), size=batch_size)]
        imgs, labs = [], []
        for i in idx:
            out = self.transform(dict(self.items[i]))
            out = out[0] if isinstance(out, list) else out
            imgs.append(torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32))
            labs.append(torch.as_tensor(np.asarray(out["label"])[0]).to(torch.int16))
        return torch.stack(imgs), torch.stack(labs), idx
