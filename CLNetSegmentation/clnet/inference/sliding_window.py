"""Sliding-window inference over the model grid: shared encoder, streamed per-cell decisions.

Tiles are visited z-row by z-row. Each tile runs the encoder once and then only the decoders that
are active for it. The plan (which tiles run at all, which decoders on each) is made before the
first tile, so every voxel's total Gaussian weight is known up front and each tile adds its share of
the final weighted-mean probabilities (:mod:`.accumulator`). The tiles cut the volume into cells
(:mod:`.tiling`); a cell is decided (argmax, uint8 confidence) and handed to ``on_block`` as soon as
its last tile has run, and its memory is released. So memory holds the open cells only, never
(classes × whole volume) nor a whole row of tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from ..model import CLNet, lean
from .accumulator import BlockResult, CellAccumulator, accumulator_dtype
from .heap import release_freed_memory
from .importance import importance_map
from .tiling import TileGrid

PADDINGS = ("end", "centred")


def padding_widths(shape_zyx: Sequence[int], patch_zyx: Sequence[int], mode: str = "end") -> list[tuple[int, int]]:
    """(before, after) per axis that bring a volume up to at least one patch: all at the end
    (clnet), or centred with the odd voxel after, as nnU-Net's ``pad_nd_image`` does (official)."""
    if mode not in PADDINGS:
        raise ValueError(f"unknown tile padding {mode!r} (use one of {PADDINGS})")
    widths = []
    for s, p in zip(shape_zyx, patch_zyx):
        extra = max(0, int(p) - int(s))
        before = extra // 2 if mode == "centred" else 0
        widths.append((before, extra - before))
    return widths


def autocast_context(device: torch.device, dtype: torch.dtype | None | str = "auto"):
    """Autocast to ``dtype`` (None: none, plain float32); ``"auto"``: bf16/fp16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        if device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def sliding_window(
    network: CLNet,
    volume: np.ndarray | torch.Tensor,
    decoders: Sequence[str],
    patch_zyx: Sequence[int],
    overlap: float,
    on_block: Callable[[BlockResult], None],
    device: torch.device,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
    pad_value: float = 0.0,
    active_decoders: Callable[[int, int], Sequence[str]] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    skip_below: float | None = None,
    store_dtype: torch.dtype | None = None,
    precision: torch.dtype | None | str = "auto",
    tile_padding: str = "end",
    gaussian: str = "clnet",
    tile_steps: str = "clnet",
    keep_probabilities: bool = False,
) -> dict[str, int]:
    """Run ``network`` over ``volume`` (z, y, x, normalised; NumPy, or a tensor already on the
    device) and stream per-cell decisions to ``on_block``.

    ``active_decoders(z0, z1)`` may narrow the decoders for tiles covering model-grid slices
    [z0, z1) (body-part gating); ``on_tile(done, total)`` reports progress and may raise to cancel;
    tiles whose values never exceed ``skip_below`` are not run at all. ``store_dtype`` overrides
    :func:`.accumulator_dtype`; ``precision`` is the autocast dtype (see
    :func:`autocast_context`). Returns how many tiles the encoder and each decoder ran on
    (``{"encoder": n, <decoder>: n, ...}``).

    ``tile_padding`` (``end`` / ``centred``: :func:`padding_widths`), ``gaussian`` (``clnet`` /
    ``official``: :mod:`.importance`) and ``tile_steps`` (``clnet`` / ``official``:
    :func:`.tile_starts`) choose between clnet's behaviour and the official pipeline's.
    ``keep_probabilities`` also hands on each block's weighted-mean probabilities (float32 store).
    """
    patch = tuple(int(p) for p in patch_zyx)
    shape = tuple(volume.shape)
    pads = padding_widths(shape, patch, tile_padding)
    padded_shape = tuple(s + a + b for s, (a, b) in zip(shape, pads))
    offset = tuple(a for a, _ in pads)  # where the volume starts in the padded grid
    vol_t = volume if isinstance(volume, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(volume))
    if padded_shape != shape:
        widths = [w for pair in pads[::-1] for w in pair]  # x first
        vol_t = torch.nn.functional.pad(vol_t[None], widths, value=pad_value)[0]

    grid = TileGrid(padded_shape, patch, overlap, tile_steps)  # type: ignore[arg-type]
    plan = _plan(grid, vol_t, decoders, shape[0], offset[0], active_decoders, skip_below)
    importance = importance_map(patch, sigma_scale, gaussian, device)
    n_classes = {d: network.decoders[d].config.num_classes for d in decoders}
    if keep_probabilities:
        store_dtype = torch.float32
    elif store_dtype is None:
        store_dtype = accumulator_dtype(sum(n_classes.values()) * grid.most_open_voxels())
    store = CellAccumulator(grid, plan, n_classes, importance, store_dtype, shape, offset, keep_probabilities)
    runs = dict.fromkeys(["encoder", *decoders], 0)

    total = len(grid.tiles)
    n_z = len(grid.tiles) // len(grid.starts[0])  # tiles per z row
    for row_start in range(0, total, n_z):
        row = range(row_start, row_start + n_z)
        for b in range(0, n_z, batch_size):
            batch = [t for t in row[b : b + batch_size] if plan[t]]
            if batch:
                active = [d for d in decoders if d in plan[batch[0]]]  # one row: the same decoders
                tiles = [vol_t[tuple(slice(o, o + p) for o, p in zip(grid.tiles[t], patch))] for t in batch]
                x = torch.stack(tiles)[:, None].to(device, non_blocking=True)
                runs["encoder"] += len(batch)
                # One decoder at a time, and its head one box at a time: a 64-class head's logits for
                # a whole 112×96×128 tile would be 350 MB in float32 (all nine heads' 1.2 GB).
                with autocast_context(device, precision):
                    for d, feats in lean.features(network, x, active):
                        runs[d] += len(batch)
                        for i, t in enumerate(batch):
                            store.add(t, d, _head_probs(network.decoders[d], feats[i : i + 1]))
                        del feats
            last = row[min(b + batch_size, n_z) - 1]
            for block in store.finished(last):
                on_block(block)
            if batch and device.type == "cpu":
                release_freed_memory()
            if on_tile is not None:
                on_tile(last + 1, total)
    return runs


def _head_probs(decoder, feats: torch.Tensor) -> Callable[[tuple[slice, slice, slice]], torch.Tensor]:
    """box → the head's softmax (classes, *box), float32, for one tile's features (1, C, *patch)."""

    def probs(box: tuple[slice, slice, slice]) -> torch.Tensor:
        logits = lean.head_logits(decoder, feats[(slice(None), slice(None), *box)])[0]
        return softmax_(logits.float(), dim=0)  # a copy only under autocast

    return probs


def softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax in place: for a 64-class head on a 112×96×128 tile that saves 350 MB against a new tensor."""
    x.sub_(x.amax(dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim, keepdim=True))


def _plan(grid: TileGrid, volume: torch.Tensor, decoders: Sequence[str], depth: int, z_offset: int,
          active_decoders: Callable[[int, int], Sequence[str]] | None,
          skip_below: float | None) -> list[frozenset[str]]:
    """The decoders each tile will run (empty: skipped): the row's active decoders, none for air.
    ``active_decoders`` is asked about the volume's own slices a row covers (padding excluded; the
    volume starts at slice ``z_offset`` of the padded grid)."""
    plan = []
    rows: dict[int, frozenset[str]] = {}
    for z, y, x in grid.tiles:
        if z not in rows:
            z0, z1 = max(0, z - z_offset), min(z + grid.patch[0] - z_offset, depth)
            rows[z] = frozenset(active_decoders(z0, z1) if active_decoders else decoders)
        run = rows[z]
        if run and skip_below is not None:
            # Tiles of pure air (outside the body) cannot hold an anatomy: skip the network.
            tile = volume[z : z + grid.patch[0], y : y + grid.patch[1], x : x + grid.patch[2]]
            if float(tile.max()) <= skip_below:
                run = frozenset()
        plan.append(run)
    return plan
