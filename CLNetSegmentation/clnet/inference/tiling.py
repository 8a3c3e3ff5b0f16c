"""Where the sliding window's tiles go, and the cells they cut the volume into.

Along each axis the tiles' starts and ends cut the axis into intervals; the product of those
intervals are *cells*. Every voxel of a cell is covered by exactly the same tiles, so a cell is
finished (nothing more will be added to it) as soon as the last of its tiles, in visiting order,
has run. Accumulating per cell and handing each cell on when it is finished keeps only the cells
still open in memory: with tiles visited z-row by z-row, that is the overlap with the next row plus
a strip of the current row, not a whole row of tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

STEP_RULES = ("clnet", "official")


def tile_starts(size: int, patch: int, overlap: float, rule: str = "clnet") -> list[int]:
    """Evenly spread tile starts covering [0, size) with at least ``overlap`` between neighbours.

    ``rule="official"``: nnU-Net v1's ``_compute_steps_for_sliding_window`` with step size
    1 − overlap, arithmetic and all (an unrounded step of patch × step size sets the number of tiles;
    clnet's own rule rounds that step down to whole voxels first, so the two differ when the volume
    is just a little longer than a whole number of steps)."""
    if rule == "official":
        return official_tile_starts(size, patch, 1.0 - overlap)
    if rule != "clnet":
        raise ValueError(f"unknown tile step rule {rule!r} (use one of {STEP_RULES})")
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


def official_tile_starts(size: int, patch: int, step_size: float) -> list[int]:
    """nnU-Net v1 tile starts along one axis (``size`` ≥ ``patch``, as after its padding)."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step_size)) + 1
    actual = (size - patch) / (n - 1)
    return [int(np.round(actual * i)) for i in range(n)]


def count_tiles(shape_zyx: Sequence[int], patch_zyx: Sequence[int], overlap: float, rule: str = "clnet") -> int:
    return math.prod(len(tile_starts(max(s, p), p, overlap, rule)) for s, p in zip(shape_zyx, patch_zyx))


@dataclass(frozen=True)
class Cell:
    """A box of the (padded) grid that one fixed set of tiles covers."""

    start: tuple[int, int, int]  # z, y, x
    stop: tuple[int, int, int]
    tiles: tuple[int, ...]  # indices (visiting order) of the tiles covering it, ascending

    @property
    def last_tile(self) -> int:
        return self.tiles[-1]

    @property
    def voxels(self) -> int:
        return math.prod(b - a for a, b in zip(self.start, self.stop))

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def within(self, origin: Sequence[int]) -> tuple[slice, slice, slice]:
        """This cell's box in the coordinates of a tile starting at ``origin``."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))  # type: ignore[return-value]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of size ``patch`` over a (padded) volume of ``shape``, visited z-row by z-row (raster order)."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    overlap: float
    rule: str = "clnet"  # where the tiles start: clnet's rule or the official one (:func:`tile_starts`)

    @cached_property
    def starts(self) -> tuple[list[int], list[int], list[int]]:
        return tuple(tile_starts(s, p, self.overlap, self.rule) for s, p in zip(self.shape, self.patch))  # type: ignore[return-value]

    @cached_property
    def tiles(self) -> list[tuple[int, int, int]]:
        """Tile origins (z, y, x) in visiting order."""
        zs, ys, xs = self.starts
        return [(z, y, x) for z in zs for y in ys for x in xs]

    def index(self, iz: int, iy: int, ix: int) -> int:
        _, ys, xs = self.starts
        return (iz * len(ys) + iy) * len(xs) + ix

    @cached_property
    def cells(self) -> list[Cell]:
        """All cells, in the order they are finished (by last covering tile, then position)."""
        per_axis = [_intervals(s, self.patch[a], self.shape[a]) for a, s in enumerate(self.starts)]
        out = []
        for (z0, z1, tz) in per_axis[0]:
            for (y0, y1, ty) in per_axis[1]:
                for (x0, x1, tx) in per_axis[2]:
                    tiles = sorted(self.index(iz, iy, ix) for iz in tz for iy in ty for ix in tx)
                    out.append(Cell((z0, y0, x0), (z1, y1, x1), tuple(tiles)))
        out.sort(key=lambda c: (c.last_tile, c.start))
        return out

    @cached_property
    def cells_of_tile(self) -> list[list[int]]:
        """For each tile, the cells it covers (indices into :attr:`cells`)."""
        out: list[list[int]] = [[] for _ in self.tiles]
        for i, cell in enumerate(self.cells):
            for t in cell.tiles:
                out[t].append(i)
        return out

    def most_open_voxels(self) -> int:
        """The largest number of voxels in cells that are open (started, not finished) at once."""
        opened = [0] * (len(self.tiles) + 1)
        for cell in self.cells:
            opened[cell.tiles[0]] += cell.voxels
            opened[cell.last_tile + 1] -= cell.voxels
        peak = running = 0
        for delta in opened[:-1]:
            running += delta
            peak = max(peak, running)
        return peak


def _intervals(starts: Sequence[int], patch: int, size: int) -> list[tuple[int, int, list[int]]]:
    """Cut [0, size) at every tile start and end; each piece with the tiles (indices) covering it."""
    cuts = sorted({0, size, *starts, *(min(s + patch, size) for s in starts)})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        covering = [i for i, s in enumerate(starts) if s <= a and b <= s + patch]
        out.append((a, b, covering))
    return out
