"""Body-part gating: which decoders can apply to which tiles.

Each decoder may carry a body-part score window (``bodypart_range`` in the manifest). The body-part
model scores every axial slice of the input; a tile runs a decoder only if the scores of the slices
it covers reach into that decoder's window. Decoders without a window always run. When the scores
do not look trustworthy for a scan (they do not rise along the body as expected), nothing is gated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..bodypart.model import SliceScores, slice_z_mm


@dataclass
class Gate:
    """Scores of the input's slices by world z, and each decoder's window."""

    z_mm: np.ndarray
    scores: np.ndarray
    windows: Mapping[str, tuple[float, float] | None]
    skipped_rows: int = 0  # (row of tiles along z, decoder) pairs that were skipped

    @classmethod
    def from_scores(cls, details: SliceScores, windows: Mapping[str, tuple[float, float] | None]) -> Gate:
        order = np.argsort(details.z_mm)
        return cls(np.asarray(details.z_mm)[order], np.asarray(details.cleaned)[order], dict(windows))

    def for_grid(self, grid: sitk.Image, decoders: Sequence[str]) -> Callable[[int, int], list[str]]:
        """A function (z0, z1) → the decoders to run on tiles covering model-grid slices [z0, z1)."""
        grid_scores = np.interp(slice_z_mm(grid), self.z_mm, self.scores)

        def active(z0: int, z1: int) -> list[str]:
            lo, hi = float(grid_scores[z0:z1].min()), float(grid_scores[z0:z1].max())
            keep = []
            for d in decoders:
                window = self.windows.get(d)
                if window is None or (window[0] <= hi and lo <= window[1]):
                    keep.append(d)
                else:
                    self.skipped_rows += 1
            return keep

        return active
