"""The one building block of CL-Net: conv → instance norm → (leaky ReLU)."""

from __future__ import annotations

from torch import nn

from .config import Triple


class ConvNormAct(nn.Sequential):
    """Conv3d (bias, 'same' padding per axis) → InstanceNorm3d (affine) → LeakyReLU or identity.

    The identity variant is CL-Net's last conv of each decoder level, which has no non-linearity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple,
        stride: Triple = (1, 1, 1),
        negative_slope: float | None = 0.01,
        eps: float = 1e-5,
    ) -> None:
        padding = tuple((k - 1) // 2 for k in kernel)
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=eps, affine=True)
        self.act = nn.Identity() if negative_slope is None else nn.LeakyReLU(negative_slope, inplace=True)
