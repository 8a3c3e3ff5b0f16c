"""Sliding-window inference over the model grid, shared encoder, z-banded accumulation.

Tiles are visited row by row along z. Each tile runs the encoder once and then only the decoders
that are active for it. Gaussian-weighted softmax outputs are accumulated in a band one patch deep;
as soon as the next row starts, the finished slab is turned into labels (argmax) and confidences
(uint8) and handed to ``on_slab``. So memory holds (classes × patch depth × Y × X), never
(classes × whole volume). A decoder's band exists only while the rows it ran on overlap the band
(body-part gating keeps most decoders off most rows), and a large band is stored in float16
(always on CUDA): 222 classes at 1.5 mm are several GB in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from ..model import CLNet


@dataclass
class SlabResult:
    """Decisions for the z range [z0, z1) of the model grid, per decoder."""

    z0: int
    z1: int
    labels: dict[str, np.ndarray]  # head-local argmax, uint8, (z, Y, X)
    confidence: dict[str, np.ndarray]  # max softmax probability × 255, uint8


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spread tile starts covering [0, size) with at least ``overlap`` between neighbours."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


def count_tiles(shape_zyx: Sequence[int], patch_zyx: Sequence[int], overlap: float) -> int:
    return math.prod(len(tile_starts(max(s, p), p, overlap)) for s, p in zip(shape_zyx, patch_zyx))


# Above this many bytes of float32 band the CPU stores the band in float16 as well: half the memory,
# and faster, because adding into a large band is bound by memory traffic (official layout, 222
# classes, 2 tiles on 2 cores: 24 s instead of 28 s). Small bands stay float32.
FLOAT16_BAND_BYTES = 256 << 20


def accumulator_dtype(device_type: str, band_values: int) -> torch.dtype:
    """The band's dtype for ``band_values`` accumulated values (classes × band voxels, all decoders)."""
    if device_type == "cuda" or band_values * 4 > FLOAT16_BAND_BYTES:
        return torch.float16
    return torch.float32


def autocast_context(device: torch.device):
    """bf16/fp16 autocast on CUDA; float32 elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


@torch.inference_mode()
def sliding_window(
    network: CLNet,
    volume: np.ndarray | torch.Tensor,
    decoders: Sequence[str],
    patch_zyx: Sequence[int],
    overlap: float,
    on_slab: Callable[[SlabResult], None],
    device: torch.device,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
    pad_value: float = 0.0,
    active_decoders: Callable[[int, int], Sequence[str]] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    skip_below: float | None = None,
    band_dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Run ``network`` over ``volume`` (z, y, x, normalised; NumPy, or a tensor already on the
    device) and stream per-slab decisions.

    ``active_decoders(z0, z1)`` may narrow the decoders for tiles covering model-grid slices
    [z0, z1) (body-part gating); ``on_tile(done, total)`` reports progress and may raise to cancel;
    tiles whose values never exceed ``skip_below`` are not run at all. ``band_dtype`` overrides
    :func:`accumulator_dtype`. Returns how many tiles the encoder and each decoder ran on
    (``{"encoder": n, <decoder>: n, ...}``).
    """
    patch = [int(p) for p in patch_zyx]
    shape = tuple(volume.shape)
    padded_shape = [max(s, p) for s, p in zip(shape, patch)]
    vol_t = volume if isinstance(volume, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(volume))
    if padded_shape != list(shape):
        widths = [w for s, ps in zip(shape[::-1], padded_shape[::-1]) for w in (0, ps - s)]  # x first
        vol_t = torch.nn.functional.pad(vol_t[None], widths, value=pad_value)[0]

    starts = [tile_starts(s, p, overlap) for s, p in zip(padded_shape, patch)]
    total = math.prod(len(s) for s in starts)
    importance = compute_importance_map(patch, mode="gaussian", sigma_scale=sigma_scale, device=device)
    importance = importance.float().clamp_min(1e-4)  # edges keep a small weight so no voxel is left empty

    n_classes = {d: network.decoders[d].config.num_classes for d in decoders}
    band_depth, Y, X = patch[0], padded_shape[1], padded_shape[2]
    if band_dtype is None:
        band_dtype = accumulator_dtype(device.type, sum(n_classes.values()) * band_depth * Y * X)
    # Per decoder: weighted class probabilities and the weight that went into them (gating means
    # decoders may have seen different tiles), for one band of tile depth; created when a decoder
    # first runs on a row, dropped once nothing it accumulated is left in the band.
    acc: dict[str, torch.Tensor] = {}
    weight: dict[str, torch.Tensor] = {}
    reach: dict[str, int] = {}  # end (z) of the last row each decoder ran on
    band_z = 0
    done = 0
    runs = dict.fromkeys(["encoder", *decoders], 0)

    def shift(t: torch.Tensor, n: int, axis: int) -> None:
        """Move the band ``n`` slices forward in place (front to back, so nothing is overwritten early)."""
        depth = t.shape[axis]
        for k in range(depth - n):
            t.select(axis, k).copy_(t.select(axis, k + n))
        t.narrow(axis, max(depth - n, 0), min(n, depth)).zero_()

    def flush(upto: int) -> None:
        """Decide [band_z, upto) and shift the band so it starts at ``upto``."""
        nonlocal band_z
        n = upto - band_z
        if n <= 0:
            return
        real_end = min(upto, shape[0])
        keep = real_end - band_z
        if keep > 0:
            labels, conf = {}, {}
            for d in acc:
                a = acc[d][:, :keep, : shape[1], : shape[2]]
                best, arg = a.max(dim=0)
                w = weight[d][:keep, : shape[1], : shape[2]].clamp_min(1e-8)
                labels[d] = arg.to(torch.uint8).cpu().numpy()
                conf[d] = (best.float() / w * 255.0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
            on_slab(SlabResult(band_z, real_end, labels, conf))
        for d in list(acc):
            if reach[d] <= upto:  # nothing of this decoder's is left in the band
                del acc[d], weight[d]
                continue
            shift(acc[d], n, 1)
            shift(weight[d], n, 0)
        band_z = upto

    for z0 in starts[0]:
        flush(z0)
        row = [(z0, y0, x0) for y0 in starts[1] for x0 in starts[2]]
        active = list(active_decoders(z0, min(z0 + patch[0], shape[0])) if active_decoders else decoders)
        for b in range(0, len(row), batch_size):
            batch_pos = row[b : b + batch_size]
            n_in_batch = len(batch_pos)
            tiles = [vol_t[z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in batch_pos]
            if skip_below is not None:
                # Tiles of pure air (outside the body) cannot hold an anatomy: skip the network.
                kept = [i for i, t in enumerate(tiles) if float(t.max()) > skip_below]
                batch_pos, tiles = [batch_pos[i] for i in kept], [tiles[i] for i in kept]
            if active and tiles:
                batch = torch.stack(tiles)[:, None].to(device, non_blocking=True)
                runs["encoder"] += len(tiles)
                # One head at a time: only one decoder's logits and probabilities exist at once
                # (nine heads' logits for a 112×96×128 tile are 1.2 GB in float32).
                with autocast_context(device):
                    for d, logits in network.heads(batch, decoders=active):
                        runs[d] += len(tiles)
                        if d not in acc:
                            acc[d] = torch.zeros((n_classes[d], band_depth, Y, X), device=device, dtype=band_dtype)
                            weight[d] = torch.zeros((band_depth, Y, X), device=device)
                        reach[d] = z0 + patch[0]
                        probs = torch.softmax(logits.float(), dim=1)
                        del logits
                        probs = probs.mul_(importance).to(band_dtype)
                        for i, (_, y, x) in enumerate(batch_pos):
                            acc[d][:, :, y : y + patch[1], x : x + patch[2]] += probs[i]
                            weight[d][:, y : y + patch[1], x : x + patch[2]] += importance
                        del probs
            done += n_in_batch
            if on_tile is not None:
                on_tile(done, total)
    flush(starts[0][-1] + patch[0])
    return runs
