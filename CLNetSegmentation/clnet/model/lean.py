"""Memory-lean inference forward of a CL-Net: the same arithmetic as ``CLNet.forward``, with less
memory at once.

On a 112×96×128 tile a full-resolution activation of 32 channels is 176 MB in float32, and the plain
forward holds several at a time: the concatenation of the upsampled features and the skip, oneDNN's
reordered copy of a conv input, the conv output and the instance norm's new tensor. Here

- each conv runs over slabs of output slices (with the input slices its kernel reaches), so a conv's
  input copy, its reordered copy and the decoder's concatenation exist one slab at a time;
- instance norm and leaky ReLU work in place on the conv output, with statistics from one pass of
  float64 sums (``torch.var_mean`` updates one value at a time and was a fifth of a CPU tile);
- on the CPU everything is computed channels-last (NDHWC), where oneDNN's 3D convolutions need no
  reordered input copy and run up to twice as fast; a z-slab of an NDHWC tensor is one contiguous block;
- the decoders stop before their 1×1 heads: the caller applies :func:`head_logits` to one box at a
  time, so a 64-class head's logits never exist for a whole tile.

Convolutions are exact per slab (zero padding is added only at the tile's own borders), so results
equal the plain forward's up to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .blocks import ConvNormAct
from .clnet import CLNet
from .decoder import Decoder, _center_crop_to

#: A conv's input slab (all channels, some output slices' worth of input slices) is kept near this size.
SLAB_BYTES = 24 << 20
#: Instance-norm statistics are summed over float32 pieces of about this size: cache-sized on the CPU;
#: on a GPU larger (fewer kernel launches), yet never a float32 copy of a whole bf16 activation.
STATS_BYTES = 4 << 20
STATS_BYTES_GPU = 32 << 20

CHANNELS_LAST = torch.channels_last_3d


def conv_norm_act(block: ConvNormAct, parts: Sequence[torch.Tensor], slab_bytes: int | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """``block`` applied to the channel concatenation of ``parts`` (N, C_i, D, H, W each), never
    building the concatenation for the whole volume (slabs of about ``slab_bytes``, default
    :data:`SLAB_BYTES`). ``channels_last``: compute in NDHWC (oneDNN's fast layout on the CPU; a
    z-slab of it is one contiguous block)."""
    slab_bytes = SLAB_BYTES if slab_bytes is None else slab_bytes
    fmt = CHANNELS_LAST if channels_last else torch.contiguous_format
    conv = block.conv
    weight = conv.weight.contiguous(memory_format=fmt)  # weights are small; no-op when already so
    (kz, _, _), (sz, _, _), (pz, py, px) = conv.kernel_size, conv.stride, conv.padding
    depth = parts[0].shape[2]
    out_depth = (depth + 2 * pz - kz) // sz + 1
    in_channels = sum(p.shape[1] for p in parts)
    row_bytes = in_channels * parts[0][0, 0, 0].numel() * parts[0].element_size() * max(1, sz)
    rows = max(1, min(out_depth, slab_bytes // max(1, row_bytes)))
    out: torch.Tensor | None = None
    for a in range(0, out_depth, rows):
        b = min(out_depth, a + rows)
        lo, hi = a * sz - pz, (b - 1) * sz - pz + kz  # input slices this slab of outputs reads
        x = _slab_input(parts, lo, hi, fmt)
        y = F.conv3d(x, weight, conv.bias, stride=conv.stride, padding=(0, py, px))
        del x
        if rows >= out_depth:  # one slab: its output is the output (small convs may not keep the layout)
            out = y.contiguous(memory_format=fmt)
            break
        if out is None:
            out = torch.empty((y.shape[0], y.shape[1], out_depth, *y.shape[3:]), dtype=y.dtype, device=y.device,
                              memory_format=fmt)
        out[:, :, a:b] = y
        del y
    assert out is not None
    _instance_norm_(out, block.norm.weight, block.norm.bias, block.norm.eps)
    if isinstance(block.act, torch.nn.LeakyReLU):
        F.leaky_relu_(out, block.act.negative_slope)
    return out


def _slab_input(parts: Sequence[torch.Tensor], lo: int, hi: int, fmt: torch.memory_format) -> torch.Tensor:
    """Input slices [lo, hi) of the channel concatenation of ``parts``, zeros where that reaches
    past the volume (the conv's own z padding), in layout ``fmt``: one copy at most (none for a
    single part inside the volume that is already in ``fmt``)."""
    depth = parts[0].shape[2]
    clo, chi = max(lo, 0), min(hi, depth)
    if len(parts) == 1 and (clo, chi) == (lo, hi):
        return parts[0][:, :, lo:hi].contiguous(memory_format=fmt)
    n, _, _, h, w = parts[0].shape
    channels = sum(p.shape[1] for p in parts)
    x = torch.empty((n, channels, hi - lo, h, w), dtype=parts[0].dtype, device=parts[0].device, memory_format=fmt)
    x[:, :, : clo - lo].zero_()
    x[:, :, chi - lo :].zero_()
    c = 0
    for p in parts:
        x[:, c : c + p.shape[1], clo - lo : chi - lo] = p[:, :, clo:chi]
        c += p.shape[1]
    return x


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, channel) mean and (biased) variance of ``x`` (N, C, D, H, W), float32.

    One pass over pieces of about :data:`STATS_BYTES` (a float32 copy of one piece at most, whatever
    ``x``'s dtype), summing values and squares in float64 after subtracting the first piece's mean:
    several times faster on the CPU than ``torch.var_mean``'s one-value-at-a-time update, and the
    shift keeps E[d²] - E[d]² from cancelling when the mean is far from zero (tested)."""
    n, c = x.shape[:2]
    if x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous():
        flat, dim = x.permute(0, 2, 3, 4, 1).reshape(n, -1, c), 1  # a view: voxels × channels
    else:
        flat, dim = x.reshape(n, c, -1), 2
    count = flat.shape[dim]
    budget = STATS_BYTES if x.device.type == "cpu" else STATS_BYTES_GPU
    per_piece = max(1, budget // (4 * c * n))
    total = torch.zeros(n, c, dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    shift: torch.Tensor | None = None
    for a in range(0, count, per_piece):
        part = flat.narrow(dim, a, min(per_piece, count - a))
        if shift is None:
            shift = part.float().mean(dim, keepdim=True)
        piece = part - shift  # a new float32 tensor (bf16/fp16 are promoted)
        total += piece.sum(dim, dtype=torch.float64)
        squares += (piece * piece).sum(dim, dtype=torch.float64)
        del piece
    assert shift is not None
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    return (mean + shift.squeeze(dim).double()).float(), var.float()


def _instance_norm_(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> None:
    """InstanceNorm3d (no running statistics) in place; statistics in float32 or better whatever ``x``'s dtype."""
    shape = (x.shape[0], x.shape[1], 1, 1, 1)
    mean, var = _channel_stats(x)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float()
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float()
    x.mul_(scale.reshape(shape).to(x.dtype)).add_(shift.reshape(shape).to(x.dtype))


def encode(network: CLNet, x: torch.Tensor, channels_last: bool = False) -> list[torch.Tensor]:
    """The encoder's stage outputs (skips), as ``Encoder.forward`` returns them."""
    skips = []
    for stage in network.encoder.stages:
        for block in stage:
            x = conv_norm_act(block, [x], channels_last=channels_last)
        skips.append(x)
    return skips


def decode(decoder: Decoder, skips: Sequence[torch.Tensor], channels_last: bool = False) -> torch.Tensor:
    """The decoder's full-resolution features, before its 1×1 head."""
    fmt = CHANNELS_LAST if channels_last else torch.contiguous_format
    x = skips[-1]
    for u, level in enumerate(decoder.levels):
        skip = skips[-(u + 2)]
        up = level.up
        parts = [F.conv_transpose3d(x.contiguous(memory_format=fmt), up.weight.contiguous(memory_format=fmt),
                                    up.bias, stride=up.stride), skip]
        if parts[0].shape[2:] != skip.shape[2:]:
            parts[0] = _center_crop_to(parts[0], skip.shape[2:])
        for block in level.blocks:
            x = conv_norm_act(block, parts, channels_last=channels_last)
            parts = [x]  # the previous input (upsampled features, or a conv's output) can go
        del parts
    return x


def features(network: CLNet, x: torch.Tensor, decoders: Sequence[str],
             channels_last: bool | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Run the encoder once, then yield (name, full-resolution features) one decoder at a time.

    ``channels_last`` (default: on the CPU) computes in NDHWC, where oneDNN's 3D convolutions run
    up to twice as fast as in NCDHW (``benchmarks/bench_layout.py``); features come back in it."""
    decoders = network.check_decoders(decoders)
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    skips = encode(network, x, channels_last)
    for name in decoders:
        yield name, decode(network.decoders[name], skips, channels_last)


def head_logits(decoder: Decoder, feats: torch.Tensor) -> torch.Tensor:
    """The decoder's 1×1 head on ``feats`` (any box of its full-resolution features)."""
    head = decoder.levels[-1].head
    return F.conv3d(feats, head.weight, head.bias)
