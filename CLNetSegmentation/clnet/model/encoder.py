"""The general encoder shared by every decoder."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct
from .config import EncoderConfig


class Encoder(nn.Module):
    """Stages of ``convs_per_stage`` ConvNormAct blocks; the first conv of a stage does the striding.

    ``forward`` returns every stage's output (the skips, deepest last).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        stages = []
        in_ch = config.in_channels
        for feat, kernel, stride in zip(config.features, config.kernels, config.strides):
            blocks = [
                ConvNormAct(
                    in_ch if i == 0 else feat,
                    feat,
                    kernel,
                    stride if i == 0 else (1, 1, 1),
                    config.negative_slope,
                    config.norm_eps,
                )
                for i in range(config.convs_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = feat
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips
