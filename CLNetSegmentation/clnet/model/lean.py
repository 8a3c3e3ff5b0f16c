"""Memory-lean inference forward of a CL-Net: the same arithmetic as ``CLNet.forward``, with less
memory at once.

On a 112×96×128 tile a full-resolution activation of 32 channels is 176 MB in float32, and the plain
forward holds several at a time: the concatenation of the upsampled features and the skip, oneDNN's
reordered copy of a conv input, the conv output and the instance norm's new tensor. Here

- each conv runs over slabs of output slices (with the input slices its kernel reaches), so a conv's
  input copy, its reordered copy and the decoder's concatenation exist one slab at a time;
- instance norm and leaky ReLU work in place on the conv output;
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


def conv_norm_act(block: ConvNormAct, parts: Sequence[torch.Tensor], slab_bytes: int | None = None) -> torch.Tensor:
    """``block`` applied to the channel concatenation of ``parts`` (N, C_i, D, H, W each), never
    building the concatenation for the whole volume (slabs of about ``slab_bytes``, default
    :data:`SLAB_BYTES`)."""
    slab_bytes = SLAB_BYTES if slab_bytes is None else slab_bytes
    conv = block.conv
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
        clo, chi = max(lo, 0), min(hi, depth)
        x = parts[0][:, :, clo:chi] if len(parts) == 1 else torch.cat([p[:, :, clo:chi] for p in parts], dim=1)
        if clo > lo or chi < hi:
            x = F.pad(x, (0, 0, 0, 0, clo - lo, hi - chi))  # the conv's own zero padding at the borders
        y = F.conv3d(x, conv.weight, conv.bias, stride=conv.stride, padding=(0, py, px))
        del x
        if out is None:
            out = y.new_empty((y.shape[0], y.shape[1], out_depth, *y.shape[3:]))
        out[:, :, a:b] = y
        del y
    assert out is not None
    _instance_norm_(out, block.norm.weight, block.norm.bias, block.norm.eps)
    if isinstance(block.act, torch.nn.LeakyReLU):
        F.leaky_relu_(out, block.act.negative_slope)
    return out


def _instance_norm_(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> None:
    """InstanceNorm3d (no running statistics) in place; statistics in float32 whatever ``x``'s dtype."""
    shape = (x.shape[0], x.shape[1], 1, 1, 1)
    flat = x.reshape(*x.shape[:2], -1)
    if x.dtype == torch.float32:
        var, mean = torch.var_mean(flat, dim=2, unbiased=False)
    else:  # bf16/fp16 under autocast: float32 statistics, one channel's copy at a time
        stats = [torch.var_mean(flat[:, c].float(), dim=1, unbiased=False) for c in range(flat.shape[1])]
        var, mean = torch.stack([v for v, _ in stats], 1), torch.stack([m for _, m in stats], 1)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float()
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float()
    x.mul_(scale.reshape(shape).to(x.dtype)).add_(shift.reshape(shape).to(x.dtype))


def encode(network: CLNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's stage outputs (skips), as ``Encoder.forward`` returns them."""
    skips = []
    for stage in network.encoder.stages:
        for block in stage:
            x = conv_norm_act(block, [x])
        skips.append(x)
    return skips


def decode(decoder: Decoder, skips: Sequence[torch.Tensor]) -> torch.Tensor:
    """The decoder's full-resolution features, before its 1×1 head."""
    x = skips[-1]
    for u, level in enumerate(decoder.levels):
        skip = skips[-(u + 2)]
        parts = [level.up(x), skip]
        if parts[0].shape[2:] != skip.shape[2:]:
            parts[0] = _center_crop_to(parts[0], skip.shape[2:])
        for block in level.blocks:
            x = conv_norm_act(block, parts)
            parts = [x]  # the previous input (upsampled features, or a conv's output) can go
        del parts
    return x


def features(network: CLNet, x: torch.Tensor, decoders: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Run the encoder once, then yield (name, full-resolution features) one decoder at a time."""
    decoders = network.check_decoders(decoders)
    skips = encode(network, x)
    for name in decoders:
        yield name, decode(network.decoders[name], skips)


def head_logits(decoder: Decoder, feats: torch.Tensor) -> torch.Tensor:
    """The decoder's 1×1 head on ``feats`` (any box of its full-resolution features)."""
    head = decoder.levels[-1].head
    return F.conv3d(feats, head.weight, head.bias)
