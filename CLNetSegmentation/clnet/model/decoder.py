"""One CL-Net decoding head: a U-Net decoder over the shared encoder's skips."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct
from .config import DecoderConfig, EncoderConfig


class DecoderLevel(nn.Module):
    """Upsample (transposed conv) → concat skip → convs (last one without non-linearity) → 1×1 head."""

    def __init__(
        self, in_channels: int, skip_channels: int, channels: tuple[int, ...], stride, kernel, enc: EncoderConfig,
        num_classes: int,
    ) -> None:
        super().__init__()
        up_ch, conv_chs = channels[0], channels[1:]
        self.up = nn.ConvTranspose3d(in_channels, up_ch, kernel_size=stride, stride=stride, bias=False)
        blocks = []
        prev = up_ch + skip_channels
        for i, ch in enumerate(conv_chs):
            last = i == len(conv_chs) - 1
            blocks.append(ConvNormAct(prev, ch, kernel, (1, 1, 1), None if last else enc.negative_slope, enc.norm_eps))
            prev = ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv3d(prev, num_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:
            x = _center_crop_to(x, skip.shape[2:])
        return self.blocks(torch.cat([x, skip], dim=1))


def _center_crop_to(x: torch.Tensor, shape) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class Decoder(nn.Module):
    """Consumes all encoder stage outputs; returns full-resolution logits (plus coarser ones for
    deep supervision when asked)."""

    def __init__(self, encoder: EncoderConfig, config: DecoderConfig) -> None:
        super().__init__()
        n = encoder.num_stages
        if not config.channels:
            config = DecoderConfig.default_for(encoder, config.num_classes)
        if len(config.channels) != n - 1:
            raise ValueError(f"decoder needs {n - 1} levels for a {n}-stage encoder, got {len(config.channels)}")
        self.config = config
        levels = []
        prev = encoder.features[-1]
        for u, chans in enumerate(config.channels):
            stage = n - 2 - u  # the encoder stage whose skip this level consumes
            levels.append(
                DecoderLevel(
                    prev, encoder.features[stage], chans, encoder.strides[stage + 1], encoder.kernels[stage + 1],
                    encoder, config.num_classes,
                )
            )
            prev = chans[-1]
        self.levels = nn.ModuleList(levels)

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool = False):
        x = skips[-1]
        outputs = []
        for u, level in enumerate(self.levels):
            x = level(x, skips[-(u + 2)])
            if deep_supervision:
                outputs.append(level.head(x))
        if deep_supervision:
            return outputs[::-1]  # full resolution first
        return self.levels[-1].head(x)
