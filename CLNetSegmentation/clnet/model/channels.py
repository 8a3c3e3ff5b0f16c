"""Channel surgery on a decoder: cut a dense decoder's state down to chosen output channels.

Used by structured pruning (``clnet prune``) and by dropping dead channels of imported weights
(:mod:`clnet.model.shrink`). Coupling is respected: a conv's output channels are the next conv's input
channels; a level's last conv also feeds its 1×1 head and the next level's upsampling; the upsampling's
outputs come before the skip channels in the input of the level's first conv.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import DecoderConfig, EncoderConfig

Layer = tuple[int, int]  # (level u, j): j = 0 the upsampling, j ≥ 1 conv j-1 of the level


def dense_indices(cfg: DecoderConfig) -> dict[Layer, np.ndarray]:
    """Every channel of every layer (nothing removed yet)."""
    return {(u, j): np.arange(w) for u, lvl in enumerate(cfg.channels) for j, w in enumerate(lvl)}


def slice_state(dense: dict[str, torch.Tensor], kept: dict[Layer, np.ndarray], dense_cfg: DecoderConfig,
                encoder: EncoderConfig) -> dict[str, torch.Tensor]:
    """Cut a dense decoder state dict down to the ``kept`` channels (indices into the dense layers)."""
    n_stages = encoder.num_stages
    out: dict[str, torch.Tensor] = {}
    prev_out: np.ndarray | None = None  # channels entering this level's upsampling (None: all)
    for u, lvl in enumerate(dense_cfg.channels):
        p = f"levels.{u}."
        up_keep = torch.as_tensor(kept[(u, 0)])
        w = dense[p + "up.weight"]  # (in, out, k...)
        if prev_out is not None:
            w = w[torch.as_tensor(prev_out)]
        out[p + "up.weight"] = w[:, up_keep].clone()
        skip_ch = encoder.features[n_stages - 2 - u]
        in_keep = torch.cat([up_keep, lvl[0] + torch.arange(skip_ch)])
        for i in range(len(lvl) - 1):
            b = f"{p}blocks.{i}."
            o = torch.as_tensor(kept[(u, i + 1)])
            out[b + "conv.weight"] = dense[b + "conv.weight"][o][:, in_keep].clone()
            out[b + "conv.bias"] = dense[b + "conv.bias"][o].clone()
            out[b + "norm.weight"] = dense[b + "norm.weight"][o].clone()
            out[b + "norm.bias"] = dense[b + "norm.bias"][o].clone()
            in_keep = o
        out[p + "head.weight"] = dense[p + "head.weight"][:, in_keep].clone()
        prev_out = in_keep.numpy()
    return out


def pruned_config(dense_cfg: DecoderConfig, kept: dict[Layer, np.ndarray]) -> DecoderConfig:
    chans = tuple(tuple(len(kept[(u, j)]) for j in range(len(lvl))) for u, lvl in enumerate(dense_cfg.channels))
    return DecoderConfig(num_classes=dense_cfg.num_classes, channels=chans)
