"""Gaussian-weighted accumulation of the tiles' class probabilities, one open cell at a time.

Each tile's softmax is weighted by the Gaussian importance map and divided by the total weight the
voxel will have received once every tile covering it has run (known in advance from the tile plan:
which tiles run, and which decoders on each). What accumulates is therefore already the final
weighted-mean probability, so it can be stored in any precision, including uint8, without a weight
volume beside it. For 222 classes a uint8 store is a quarter of float32; each tile's share is
rounded, and the scale leaves room for the rounding so that sums never overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tiling import Cell, TileGrid

Box = tuple[slice, slice, slice]
#: A head's probabilities are computed for at most about this many bytes at a time.
PIECE_BYTES = 32 << 20

# Stored values above this many bytes in float32 are stored in uint8 instead (a quarter of the
# memory); smaller stores stay float32, exact up to float rounding.
QUANTISE_ABOVE_BYTES = 256 << 20


def accumulator_dtype(values: int) -> torch.dtype:
    """The store's dtype for ``values`` open values (classes × open voxels, all decoders)."""
    return torch.uint8 if values * 4 > QUANTISE_ABOVE_BYTES else torch.float32


@dataclass
class BlockResult:
    """Decisions for one box of the model grid, per decoder that ran there."""

    box: tuple[slice, slice, slice]  # z, y, x
    labels: dict[str, np.ndarray]  # head-local argmax, uint8
    confidence: dict[str, np.ndarray]  # winning probability × 255, uint8
    #: The weighted-mean probabilities (classes, *box) themselves, float32; only when asked for
    #: (``keep_probabilities``: checks against other pipelines).
    probabilities: dict[str, np.ndarray] | None = None

    def shifted(self, offset_zyx: Sequence[int]) -> BlockResult:
        """The same block moved by ``offset_zyx`` (tiles over a region → the whole grid)."""
        if not any(offset_zyx):
            return self
        box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(self.box, offset_zyx))
        return BlockResult(box, self.labels, self.confidence, self.probabilities)  # type: ignore[arg-type]


class CellAccumulator:
    """Weighted-mean class probabilities for the open cells of ``grid``, per decoder.

    ``plan[t]`` names the decoders that will run on tile ``t`` (empty: the tile is skipped). Call
    :meth:`add` with each tile's softmax, then :meth:`finished` after the tile to collect the cells
    nothing will be added to any more; their memory is released as they are handed out.
    """

    def __init__(self, grid: TileGrid, plan: Sequence[frozenset[str]], n_classes: Mapping[str, int],
                 importance: torch.Tensor, dtype: torch.dtype, real_shape: Sequence[int],
                 real_start: Sequence[int] = (0, 0, 0), keep_probabilities: bool = False) -> None:
        self.grid = grid
        self.plan = plan
        self.decoders = list(n_classes)
        self.n_classes = dict(n_classes)
        self.importance = importance
        self.dtype = dtype
        # The volume's own voxels in the padded grid: [real_start, real_start + real_shape); the rest
        # is padding, whose decisions are dropped (padding sits at the end, or around the volume).
        self.real_shape = tuple(int(s) for s in real_shape)
        self.real_start = tuple(int(s) for s in real_start)
        self.keep_probabilities = keep_probabilities and dtype.is_floating_point
        self.quantised = not dtype.is_floating_point
        self._values: dict[tuple[int, str], torch.Tensor] = {}
        self._factors: dict[tuple[int, str], tuple[torch.Tensor, float]] = {}  # 1/total weight, and scale
        # Cells that one tile alone covers (for a decoder) are decided straight from that tile's
        # probabilities: 2 bytes a voxel (label, confidence) instead of one value per class.
        self._direct: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._next = 0  # grid.cells[self._next] is the next cell to finish
        self.open_values = 0
        self.peak_open_values = 0

    def _factor(self, index: int, decoder: str) -> tuple[torch.Tensor, float]:
        """(scale / total weight) over the cell for this decoder, and the scale (255 or less for uint8)."""
        key = (index, decoder)
        if key not in self._factors:
            cell = self.grid.cells[index]
            tiles = [t for t in cell.tiles if decoder in self.plan[t]]
            total = sum(self.importance[cell.within(self.grid.tiles[t])] for t in tiles)
            # Each rounded share is at most 0.5 too big: with n shares a scale of 255 - n/2 keeps the
            # sum within a uint8.
            scale = 255.0 - (len(tiles) + 1) // 2 if self.quantised else 1.0
            self._factors[key] = (scale / total, scale)
        return self._factors[key]

    def add(self, tile: int, decoder: str, probs: torch.Tensor | Callable[[Box], torch.Tensor]) -> None:
        """Add one tile's softmax for ``decoder``: a (classes, *patch) float32 tensor, or a function
        that returns it for a box of the tile (then only one box's worth exists at a time: a cell, cut
        along z to about :data:`PIECE_BYTES`). The probabilities are used up: scaled in place."""
        origin = self.grid.tiles[tile]
        classes = self.n_classes[decoder]
        for index in self.grid.cells_of_tile[tile]:
            cell = self.grid.cells[index]
            local = cell.within(origin)
            key = (index, decoder)
            depth = local[0].stop - local[0].start
            plane = (local[1].stop - local[1].start) * (local[2].stop - local[2].start)
            rows = depth if isinstance(probs, torch.Tensor) else max(1, PIECE_BYTES // (4 * classes * plane))
            pieces = []  # (first, stop) along the cell's z, and that piece's box in the tile
            for a in range(0, depth, rows):
                b = min(depth, a + rows)
                pieces.append((a, b, (slice(local[0].start + a, local[0].start + b), local[1], local[2])))
            alone = sum(decoder in self.plan[t] for t in cell.tiles) == 1
            if alone and not self.keep_probabilities:  # this tile alone: decide now
                shape = tuple(b - a for a, b in zip(cell.start, cell.stop))
                label = torch.empty(shape, dtype=torch.uint8, device=self.importance.device)
                conf = torch.empty(shape, dtype=torch.uint8, device=self.importance.device)
                for a, b, piece in pieces:
                    best, arg = _probs_in(probs, piece).max(dim=0)
                    label[a:b] = arg.to(torch.uint8)
                    conf[a:b] = best.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
                self._direct[key] = (label, conf)
                continue
            factor, _ = self._factor(index, decoder)
            store = self._values.get(key)
            if store is None:
                shape = (classes, *(b - a for a, b in zip(cell.start, cell.stop)))
                store = self._values[key] = torch.zeros(shape, dtype=self.dtype, device=self.importance.device)
                self.open_values += cell.voxels * classes
                self.peak_open_values = max(self.peak_open_values, self.open_values)
            for a, b, piece in pieces:
                share = _probs_in(probs, piece).mul_(self.importance[piece] * factor[a:b])
                store[:, a:b] += share.round_().to(self.dtype) if self.quantised else share.to(self.dtype)
                del share

    def finished(self, upto_tile: int) -> Iterator[BlockResult]:
        """The cells whose last covering tile is ``upto_tile`` or earlier, each decided once."""
        cells = self.grid.cells
        while self._next < len(cells) and cells[self._next].last_tile <= upto_tile:
            index, cell = self._next, cells[self._next]
            self._next += 1
            block = self._decide(index, cell)
            if block is not None:
                yield block

    def _decide(self, index: int, cell: Cell) -> BlockResult | None:
        # The part of the cell inside the volume's own voxels, in the cell's coordinates.
        lo = [max(a, r) - a for a, r in zip(cell.start, self.real_start)]
        hi = [min(b, r + s) - a for a, b, r, s in zip(cell.start, cell.stop, self.real_start, self.real_shape)]
        inside = all(h > low for low, h in zip(lo, hi))
        part = tuple(slice(low, h) for low, h in zip(lo, hi))
        labels, confidence, probabilities = {}, {}, {}
        for d in self.decoders:
            direct = self._direct.pop((index, d), None)
            if direct is not None:
                if inside:
                    labels[d], confidence[d] = (v[part].cpu().numpy() for v in direct)
                continue
            store = self._values.pop((index, d), None)
            factor = self._factors.pop((index, d), None)
            if store is None:
                continue
            self.open_values -= cell.voxels * store.shape[0]
            if not inside:  # padding only
                continue
            best, arg = store[(slice(None), *part)].max(dim=0)
            labels[d] = arg.to(torch.uint8).cpu().numpy()
            scale = factor[1] if factor else 1.0
            confidence[d] = (best.float() * (255.0 / scale)).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
            if self.keep_probabilities:
                probabilities[d] = store[(slice(None), *part)].float().cpu().numpy()
        if not labels:
            return None
        box = tuple(slice(a + low - r, a + h - r) for a, low, h, r in zip(cell.start, lo, hi, self.real_start))
        return BlockResult(box, labels, confidence, probabilities or None)  # type: ignore[arg-type]


def _probs_in(probs: torch.Tensor | Callable[[Box], torch.Tensor], box: Box) -> torch.Tensor:
    """(classes, *box) probabilities: a view of a whole tile's, or computed for the box."""
    return probs[(slice(None), *box)] if isinstance(probs, torch.Tensor) else probs(box)
