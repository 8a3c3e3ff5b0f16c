"""Memory planning for a segmentation run: estimate the peak, refuse hopeless runs, survive GPU OOM.

The estimate is deliberately simple arithmetic over the sizes the pipeline allocates (see
:func:`estimate_memory`), so it can run before anything heavy is loaded and be explained to a user.
It models the CPU/RAM case; on a GPU the ``network_*`` and ``open_cell_*`` entries of the breakdown live
in GPU memory instead, so a caller checking a GPU can sum those entries separately.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import ClnetError
from ..manifest import Manifest
from ..model.config import EncoderConfig
from ..model.lean import SLAB_BYTES
from .accumulator import PIECE_BYTES, accumulator_dtype
from .tiling import TileGrid

T = TypeVar("T")

GB = 1024**3
FLOAT_BYTES = 4
REFUSE_FRACTION = 0.85
WARN_FRACTION = 0.60
# Python + torch + SimpleITK + monai after import, before any image is loaded (measured RSS ~0.4-0.6 GB).
RUNTIME_BYTES = int(0.6 * GB)
# Allocator fragmentation and convolution workspaces (oneDNN on CPU, cuDNN on GPU) on top of the
# tensors we count. The measured peak RSS of a CPU forward of the official layout (patches 28x48x64
# and 56x48x64, 2-3 decoders) was 1.10-1.13x the counted tensors; 1.25 leaves a margin.
ACTIVATION_OVERHEAD = 1.25


class ResourceError(ClnetError):
    """The run needs more memory than this machine can give it."""


@dataclass
class MemoryEstimate:
    """Expected peak memory of one run (bytes) and the sizes it was made of.

    ``breakdown`` maps a component to its bytes; ``phases`` maps each pipeline phase to the
    components alive together during it. ``peak_bytes`` is the largest phase total.
    """

    peak_bytes: int
    breakdown: dict[str, int]
    phases: dict[str, list[str]] = field(default_factory=dict)

    def phase_bytes(self, phase: str) -> int:
        """Total of the components alive during ``phase``."""
        return sum(self.breakdown[c] for c in self.phases[phase])

    def top_parts(self, n: int = 3) -> str:
        """The ``n`` largest components, e.g. 'open_cell_store 3.0 GB, input_image 2.0 GB'."""
        top = sorted(self.breakdown.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {_gb(size)}" for name, size in top)


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _stage_shapes(encoder: EncoderConfig, patch_zyx: Sequence[int]) -> list[int]:
    """Voxels per tile at each encoder stage's resolution (strides accumulate)."""
    voxels, shape = [], [int(p) for p in patch_zyx]
    for stride in encoder.strides:
        shape = [max(1, math.ceil(s / st)) for s, st in zip(shape, stride)]
        voxels.append(math.prod(shape))
    return voxels


def _conv_params(cin: int, cout: int, kernel: Sequence[int], bias: bool = True, norm: bool = True) -> int:
    return cin * cout * math.prod(kernel) + (cout if bias else 0) + (2 * cout if norm else 0)


def network_parameters(manifest: Manifest, decoders: Sequence[str]) -> int:
    """Number of weights of the encoder plus the named decoders (counted from the configs)."""
    enc = manifest.encoder
    total, cin = 0, enc.in_channels
    for feat, kernel in zip(enc.features, enc.kernels):
        for i in range(enc.convs_per_stage):
            total += _conv_params(cin if i == 0 else feat, feat, kernel)
        cin = feat
    n = enc.num_stages
    for name in decoders:
        cfg = manifest.decoders[name].config
        prev = enc.features[-1]
        for u, chans in enumerate(cfg.channels):
            stage = n - 2 - u
            stride, kernel = enc.strides[stage + 1], enc.kernels[stage + 1]
            total += prev * chans[0] * math.prod(stride)  # transposed conv, no bias
            cin = chans[0] + enc.features[stage]
            for ch in chans[1:]:
                total += _conv_params(cin, ch, kernel)
                cin = ch
            total += cin * cfg.num_classes  # 1x1 head (every level has one, for deep supervision)
            prev = chans[-1]
    return total


def activation_bytes(manifest: Manifest, decoders: Sequence[str], patch_zyx: Sequence[int], batch_size: int) -> int:
    """Peak bytes of the tensors alive during one lean forward pass over a batch of tiles
    (:mod:`clnet.model.lean`).

    What is alive at once: every encoder skip (kept for the decoders); the working set of the block
    being computed (its input and its output: norms and activations work in place, and a conv's
    input, padded and reordered copies exist one slab of slices at a time); and the logits of one
    box of one head (heads are applied a box at a time). Summing *all* feature maps would
    overestimate by about the number of layers.
    """
    enc = manifest.encoder
    vox = _stage_shapes(enc, patch_zyx)
    skips = sum(f * v for f, v in zip(enc.features, vox))
    working = max(f * v + enc.in_channels * vox[0] for f, v in zip(enc.features, vox))  # conv 1's output
    n = enc.num_stages
    for name in decoders:
        cfg = manifest.decoders[name].config
        for u, chans in enumerate(cfg.channels):
            stage = n - 2 - u
            # upsampled map and first conv's output, then one conv's output and the next one's
            working = max(working, 2 * max(chans) * vox[stage])
    slabs = 3 * SLAB_BYTES // FLOAT_BYTES  # a conv's input slab, its zero-padded copy, its output slab
    head = 2 * PIECE_BYTES // FLOAT_BYTES  # one box of logits (and their float32 copy under autocast)
    floats = skips + working + slabs + head
    return int(batch_size * floats * FLOAT_BYTES * ACTIVATION_OVERHEAD)


def model_grid_shape(
    image_size_xyz: Sequence[int], image_spacing_xyz: Sequence[float], spacing_zyx: Sequence[float]
) -> tuple[int, int, int]:
    """(z, y, x) size of the image resampled to the model spacing (whole image: worst-case crop)."""
    xyz = [max(1, round(n * s / t)) for n, s, t in zip(image_size_xyz, image_spacing_xyz, spacing_zyx[::-1])]
    return int(xyz[2]), int(xyz[1]), int(xyz[0])


def estimate_memory(
    image_size_xyz: Sequence[int],
    image_spacing_xyz: Sequence[float],
    manifest: Manifest,
    decoders: Sequence[str],
    fast: bool = False,
    batch_size: int = 1,
) -> MemoryEstimate:
    """Estimate the peak RAM of segmenting an image of this size with these decoders.

    Components follow the pipeline (``Segmenter.segment``): the input kept as float32 (the worst
    case; a caller's image stays alive throughout); during preprocessing (on the CPU) the resampled
    volume and one slab of it (the input is neither re-oriented nor cropped by copy); during the network the normalised model-grid volume, the
    class probabilities of the cells open at once (classes × open voxels per decoder, in float32 or,
    when that would be large, uint8, plus each open cell's weight factor and the temporaries of
    deciding a cell), the uint8
    label and confidence volumes, activations for a batch of tiles and the weights; at the end the
    label image on the input grid and one copy of it (merging several preprocessing groups). The
    peak is the largest of these phase totals.
    """
    prep = manifest.preprocessing
    unknown = [d for d in decoders if d not in manifest.decoders]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}")
    spacing = prep.fast_spacing_zyx if (fast and prep.fast_spacing_zyx) else prep.spacing_zyx
    patch = [int(p) for p in prep.patch_size_zyx]
    batch_size = max(1, int(batch_size))
    n_in = math.prod(int(n) for n in image_size_xyz)
    gz, gy, gx = model_grid_shape(image_size_xyz, image_spacing_xyz, spacing)
    padded = [max(g, p) for g, p in zip((gz, gy, gx), patch)]
    n_model = math.prod(padded)
    open_voxels = TileGrid(tuple(padded), tuple(patch), prep.overlap).most_open_voxels()  # type: ignore[arg-type]
    classes = [manifest.decoders[d].config.num_classes for d in decoders]
    label_bytes = 1 if len(manifest.anatomy_owner()) < 256 else 2
    store_bytes = accumulator_dtype(sum(classes) * open_voxels).itemsize

    b = {
        "runtime": RUNTIME_BYTES,
        "input_image": n_in * FLOAT_BYTES,
        "model_grid_volume": n_model * FLOAT_BYTES,
        # the geometry-only grid image (uint8) and one resampled slab
        "model_grid_resample_slab": n_model + (8 << 20),
        # every decoder's open cells (the worst case: body-part gating usually leaves some out)
        "open_cell_store": (sum(classes) * store_bytes + len(classes) * FLOAT_BYTES) * open_voxels,
        # deciding a cell: its max and argmax (int64) over classes; a cell is at most one tile
        "cell_decide_copy": (store_bytes + 8 + 2 * FLOAT_BYTES) * math.prod(patch),
        "label_and_confidence": 2 * n_model,
        "network_weights": network_parameters(manifest, decoders) * FLOAT_BYTES,
        "network_activations": activation_bytes(manifest, decoders, patch, batch_size),
        "network_input_tiles": batch_size * math.prod(patch) * FLOAT_BYTES,
        "output_labels": n_in * label_bytes,
        "output_merge_copy": n_in * label_bytes,
    }
    phases = {
        "prepare": ["runtime", "input_image", "model_grid_volume", "model_grid_resample_slab", "network_weights"],
        "network": ["runtime", "input_image", "model_grid_volume", "open_cell_store", "cell_decide_copy",
                    "label_and_confidence", "network_weights", "network_activations", "network_input_tiles"],
        "merge": ["runtime", "input_image", "label_and_confidence", "network_weights", "output_labels",
                  "output_merge_copy"],
    }
    peak = max(sum(b[c] for c in names) for names in phases.values())
    return MemoryEstimate(peak_bytes=int(peak), breakdown={k: int(v) for k, v in b.items()}, phases=phases)


def available_memory(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None if unknown."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: macOS / Windows
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_memory(estimate: MemoryEstimate, available_bytes: int | None = None) -> list[str]:
    """Refuse a run that cannot fit; return warnings for one that will be tight.

    Raises :class:`ResourceError` above ``REFUSE_FRACTION`` of the available memory (the rest is
    headroom for the OS, other programs and estimate error); warns above ``WARN_FRACTION``.
    Without a known amount of available memory nothing is checked.
    """
    if available_bytes is None:
        available_bytes = available_memory()
    if not available_bytes or available_bytes <= 0:
        return []
    need = estimate.peak_bytes
    if need > REFUSE_FRACTION * available_bytes:
        raise ResourceError(
            f"This run needs about {_gb(need)} of memory ({estimate.top_parts()}), but this machine has "
            f"{_gb(available_bytes)} available.",
            "Use --fast, fewer anatomies (--anatomies/--regions), or a machine with more memory.",
        )
    if need > WARN_FRACTION * available_bytes:
        return [
            f"This run needs about {_gb(need)} of memory, {100 * need / available_bytes:.0f}% of the "
            f"{_gb(available_bytes)} available; other programs may slow it down or make it fail."
        ]
    return []


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM and for the RuntimeErrors torch raises when any allocator runs dry."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    return False


def _release_cached(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_fallback(
    run: Callable[[torch.device, int], T],
    device: torch.device,
    batch_size: int,
    log: Callable[[str], None],
    cpu_fallback: bool = True,
) -> T:
    """Call ``run(device, batch_size)``; on out-of-memory retry with half the batch, then on the CPU.

    The batch halves down to 1 on the same device; after that a GPU run moves to the CPU with batch
    size 1. Every retry is logged through ``log``. Errors other than out-of-memory propagate
    unchanged; running out of memory on the last option raises :class:`ResourceError`.
    """
    device = torch.device(device)
    batch_size = max(1, int(batch_size))
    while True:
        try:
            return run(device, batch_size)
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Retry outside the except block: the traceback holds the failed attempt's frames (and its
        # tensors), which must be released before memory can be reused.
        _release_cached(device)
        if batch_size > 1:
            new = batch_size // 2
            log(f"Out of memory on {device} with batch size {batch_size}; retrying with batch size {new}.")
            batch_size = new
        elif device.type != "cpu" and cpu_fallback:
            log(f"Out of memory on {device} even with batch size 1; continuing on the CPU (slower).")
            device, batch_size = torch.device("cpu"), 1
        else:
            raise ResourceError(
                f"Out of memory on {device} even with batch size 1 ({reason}).",
                "Use --fast, fewer anatomies, close other programs, or use a machine with more memory.",
            )


def summarize(breakdown: Mapping[str, int]) -> str:
    """Multi-line human-readable breakdown, largest first (for logs and --debug output)."""
    return "\n".join(f"{name:<26} {_gb(size):>9}" for name, size in sorted(breakdown.items(), key=lambda kv: -kv[1]))
