"""Dice on prepared scans, on the model grid, through the engine's own sliding window."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..inference.accumulator import BlockResult
from ..inference.sliding_window import sliding_window
from ..model import CLNet
from .datasets import PreparedCase


def predict_labels(network: CLNet, decoder: str, case: PreparedCase, patch: Sequence[int], overlap: float,
                   pad_value: float, device: torch.device) -> np.ndarray:
    """Head-local argmax (0 = background) over a whole prepared scan."""
    out = np.zeros(case.image.shape, dtype=np.uint8)

    def on_block(b: BlockResult) -> None:
        out[b.box] = b.labels[decoder]

    network.eval()
    sliding_window(network, case.image, [decoder], patch, overlap, on_block, device, pad_value=pad_value)
    return out


def dice_per_anatomy(network: CLNet, decoder: str, names: Sequence[str], labels: Sequence[int],
                     cases: Sequence[PreparedCase], patch: Sequence[int], overlap: float, pad_value: float,
                     device: torch.device) -> dict[str, float]:
    """Dice per anatomy, pooled over the scans that label it; anatomies absent from every reference are
    left out (their Dice is undefined)."""
    inter = np.zeros(len(names))
    denom = np.zeros(len(names))
    ref_count = np.zeros(len(names))
    for case in cases:
        lut, known = case.targets(labels)
        if not known[1:].any():
            continue
        pred = predict_labels(network, decoder, case, patch, overlap, pad_value, device)
        ref = lut[case.labels]
        for i in range(len(names)):
            if not known[i + 1]:
                continue
            p, r = pred == i + 1, ref == i + 1
            inter[i] += np.logical_and(p, r).sum()
            denom[i] += p.sum() + r.sum()
            ref_count[i] += r.sum()
    return {
        n: float(2 * inter[i] / denom[i]) for i, n in enumerate(names) if ref_count[i] > 0
    }


def mean_dice(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")
