"""Body-part gating: which decoders can apply to which slices and tiles.

Each decoder may carry a body-part score window (``bodypart_range`` in the manifest), and each of its
anatomies one of its own (``anatomy_bodypart_ranges``); the Segmenter picks the window that fits the
anatomies asked for (:meth:`clnet.manifest.DecoderEntry.window_for`). The body-part model scores every
axial slice of the input. The network then runs only on the *slab* of model-grid slices whose scores
lie in some decoder's window (enlarged to at least one tile, as the official pipeline crops each
head's input), and within the slab a tile runs a decoder only if the scores of the slices it covers
reach into that decoder's window. Decoders without a window always run everywhere. When the scores do
not look trustworthy for a scan (they do not rise along the body as expected), or the scorer cannot
score it at all (one slice, non-axial slices, not a CT), nothing is gated.

The scores come from the model's own body-part network when its manifest names one (the official
release's bpreg network after ``clnet import-official``), else from clnet's bundled one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..bodypart import BodyPartModel, BpregModel
from ..bodypart import load_default as load_default_bodypart
from ..bodypart.model import SliceScores, slice_z_mm
from .locate import fit_range

if TYPE_CHECKING:
    from ..checkpoint import LoadedModel


def bodypart_scorer(model: LoadedModel) -> tuple[BodyPartModel | BpregModel, str]:
    """The body-part network that scores slices for ``model``, and "model" or "bundled": its own
    (manifest ``bodypart``, verified when loaded) if it has one, else clnet's bundled one."""
    own = model.manifest.extra.get("bodypart")  # older manifests: a clnet model file under extra
    if model.bodypart is not None:
        return model.bodypart, "model"
    if own and model.directory is not None:
        return BodyPartModel.load(model.directory / own["file"], sha256=own["sha256"]), "model"
    return load_default_bodypart(), "bundled"


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

    def grid_scores(self, grid: sitk.Image) -> np.ndarray:
        """One score per z slice of a model grid (interpolated by world z)."""
        return np.interp(slice_z_mm(grid), self.z_mm, self.scores)

    def slab(self, grid: sitk.Image, decoders: Sequence[str], min_depth: int) -> tuple[int, int] | None:
        """[z0, z1) of the model grid's slices that some decoder applies to, enlarged (centred, kept
        inside the grid) to ``min_depth`` slices; None when no decoder applies to any slice."""
        scores = self.grid_scores(grid)
        depth = scores.size
        inside = np.zeros(depth, dtype=bool)
        for d in decoders:
            window = self.windows.get(d)
            if window is None:
                return (0, depth)
            inside |= (scores >= window[0]) & (scores <= window[1])
        hits = np.flatnonzero(inside)
        if hits.size == 0:
            return None
        return fit_range(int(hits[0]), int(hits[-1]) + 1, depth, min_depth)

    def for_grid(self, grid: sitk.Image, decoders: Sequence[str], offset: int = 0) -> Callable[[int, int], list[str]]:
        """A function (z0, z1) → the decoders to run on tiles covering model-grid slices
        [offset + z0, offset + z1) (``offset``: where the volume the tiles cover starts in the grid)."""
        grid_scores = self.grid_scores(grid)

        def active(z0: int, z1: int) -> list[str]:
            covered = grid_scores[offset + z0 : offset + z1]
            lo, hi = float(covered.min()), float(covered.max())
            keep = []
            for d in decoders:
                window = self.windows.get(d)
                if window is None or (window[0] <= hi and lo <= window[1]):
                    keep.append(d)
                else:
                    self.skipped_rows += 1
            return keep

        return active


def scoring_record(details: SliceScores, source: str) -> dict:
    """JSON-ready summary of how the slices were scored, for ``segmentation.json``: which network
    (``kind``; ``source`` = the model's own or clnet's bundled one), the scores' range and slope, and
    whether they were trusted."""
    finite = np.asarray(details.cleaned, dtype=float)
    finite = finite[np.isfinite(finite)]

    def num(v: float) -> float | None:
        return round(float(v), 4) if np.isfinite(v) else None

    return {
        "kind": details.scorer,
        "source": source,
        "slices": int(np.asarray(details.z_mm).size),
        "score_range": [num(finite.min()), num(finite.max())] if finite.size else None,
        "slope_units_per_mm": num(details.slope),
        "expected_slope_units_per_mm": num(details.expected_slope),
        "slope_ratio": num(details.slope_ratio),
        "reliable": details.reliable,
        "problem": details.problem,
        **({"details": details.details} if details.details else {}),
    }
