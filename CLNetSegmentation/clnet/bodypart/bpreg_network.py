"""The slice scorer of bpreg (Schuhegger et al.), the body-part network of the official CL-Net release.

Layout, as the published method describes it: the VGG16 ``features`` stack (thirteen 3×3 convolutions
with ReLU, five 2×2 max-pools) whose first convolution takes one channel and has no bias, then a 1×1
convolution (``conv6``) with ReLU, the mean over the slice (H, W) and one linear output (``fc7``): one
raw score per axial slice. Written with plain ``torch.nn`` for clnet; the tensor names and shapes are
those of a torchvision ``vgg16().features`` so an official state dict maps onto it by name
(:mod:`clnet.bodypart.bpreg_import`).
"""

from __future__ import annotations

import torch
from torch import nn

#: VGG16 ("configuration D"): output channels of each 3×3 convolution, "M" = 2×2 max-pool.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")
KIND = "bpreg-vgg16"


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 1
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        # The first convolution sees the single CT channel and has no bias, as in bpreg.
        layers += [nn.Conv2d(cin, int(item), kernel_size=3, padding=1, bias=cin != 1), nn.ReLU(inplace=True)]
        cin = int(item)
    return nn.Sequential(*layers)


class BpregNetwork(nn.Module):
    """(N, 1, H, W) slices in [-1, 1] → (N,) raw scores (before bpreg's landmark transform)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.conv6 = nn.Conv2d(512, 512, kernel_size=1)
        self.fc7 = nn.Linear(512, 1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The 512 features fc7 reads: mean over the slice of ReLU(conv6(VGG features))."""
        return torch.relu(self.conv6(self.features(x.float()))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc7(self.pooled(x)).squeeze(1)


def conv_indices() -> list[int]:
    """Positions of the convolutions inside ``features`` (0, 2, 5, 7, 10, ...: the torchvision indices)."""
    out, i = [], 0
    for item in VGG16_LAYOUT:
        if item == "M":
            i += 1
        else:
            out.append(i)
            i += 2
    return out
