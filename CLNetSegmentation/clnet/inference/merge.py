"""Merge the decoders' decisions into one catalog label map.

Rule (documented in README): each decoder decides among its own anatomies (softmax argmax, so
within a decoder labels never overlap). Where two decoders claim the same voxel for different
anatomies, the claim with the higher softmax confidence wins; on a tie the decoder listed first in
the manifest wins. Decoders that body-part gating ruled out for a slice make no claim there. An
anatomy that two decoders both output (e.g. oesophagus) has one catalog label, so such claims
agree. Anatomies that were not requested are dropped *after* the decoder's own argmax, so a subset
run on the same tiles keeps exactly the decisions the full run makes inside each decoder (with
per-anatomy body-part windows a subset may run on fewer slices, and its tiles then sit differently).

Corrections: a decoder that ``replaces`` an anatomy (``clnet add-decoder`` on an anatomy the model
already had) owns it; every other decoder's channel for it maps to background here (the Segmenter
builds the lookups from ``Manifest.ignored_channels``), so the old decoder's voxels of that anatomy
make no claim, and its other anatomies keep exactly the decisions they had. The newest correction wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .accumulator import BlockResult


def decoder_lookup(channel_anatomies: Sequence[str], labels_by_name: Mapping[str, int],
                   requested: set[str]) -> np.ndarray:
    """uint8/uint16 table: head-local channel → catalog label (0 for background and unrequested)."""
    lut = np.zeros(len(channel_anatomies) + 1, dtype=np.uint16)
    for i, name in enumerate(channel_anatomies, start=1):
        if name in requested:
            lut[i] = labels_by_name[name]
    return lut


class LabelMerger:
    """Collects decided blocks into a (z, y, x) catalog label map plus the winning confidence."""

    def __init__(self, shape_zyx: Sequence[int], lookups: Mapping[str, np.ndarray], order: Sequence[str],
                 dtype=np.uint8, keep_heads: bool = False) -> None:
        self.labels = np.zeros(tuple(shape_zyx), dtype=dtype)
        self.confidence = np.zeros(tuple(shape_zyx), dtype=np.uint8)
        self.lookups = dict(lookups)
        self.order = [d for d in order if d in self.lookups]
        self.conflicts = 0  # voxels where a later decoder overruled an earlier one
        # Head-local label maps (all of a head's classes), for official-style per-decoder output.
        self.heads = {d: np.zeros(tuple(shape_zyx), np.uint8) for d in self.order} if keep_heads else {}

    def add(self, block: BlockResult) -> None:
        out = self.labels[block.box]
        best = self.confidence[block.box]
        claimed = np.zeros(out.shape, dtype=bool)
        for d in self.order:
            if d not in block.labels:
                continue
            if self.heads:
                self.heads[d][block.box] = block.labels[d]
            glob = self.lookups[d][block.labels[d]]
            conf = block.confidence[d]
            claim = glob > 0
            wins = claim & (~claimed | (conf > best))
            self.conflicts += int(np.count_nonzero(wins & claimed & (out != glob)))
            out[wins] = glob[wins].astype(out.dtype, copy=False)
            best[wins] = conf[wins]
            claimed |= claim


def merge_claims(labels: np.ndarray, confidence: np.ndarray, new_labels: np.ndarray,
                 new_confidence: np.ndarray) -> int:
    """Merge another group's decisions into (labels, confidence) in place with the same rule
    (higher confidence wins, earlier wins ties); returns the number of overruled voxels."""
    claim = new_labels > 0
    wins = claim & ((labels == 0) | (new_confidence > confidence))
    overruled = int(np.count_nonzero(wins & (labels > 0) & (labels != new_labels)))
    labels[wins] = new_labels[wins]
    confidence[wins] = new_confidence[wins]
    return overruled


def labels_present(labels: np.ndarray, chunk_voxels: int = 1 << 22) -> set[int]:
    """The non-zero values in a label map. Counted a chunk at a time: ``np.bincount`` widens its input
    to 64-bit integers, which for a whole 512×512×800 map would be 1.6 GB."""
    flat = labels.reshape(-1)
    counts = np.zeros(int(np.iinfo(labels.dtype).max) + 1, np.int64)
    for start in range(0, flat.size, chunk_voxels):
        counts += np.bincount(flat[start : start + chunk_voxels], minlength=counts.size)
    return set(np.flatnonzero(counts).tolist()) - {0}
