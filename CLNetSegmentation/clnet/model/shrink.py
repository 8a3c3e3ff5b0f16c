"""Drop the dead channels of a mask-pruned decoder, so that it really becomes a smaller network.

The official CL-Net decoders are pruned *unstructured* (80–99.8 % of the conv weights set to zero) but
stored dense, so they cost as much as unpruned ones. Many whole channels end up with nothing to do.
A channel is removed when dropping it cannot change the decoder's output:

* it outputs zero everywhere: an upsampling channel whose weights from the remaining inputs are all
  zero (it has no bias), or a conv channel whose weights (or norm scale γ) are all zero and whose norm
  shift β is zero (instance norm maps a constant to β, and leaky ReLU(0) = 0);
* nobody reads it: every weight that consumes it is zero (the next conv, the next level's upsampling,
  or the final 1×1 head; the coarser levels' deep-supervision heads are not used at inference).

Removing one channel can make others removable (their only reader is gone), so this repeats until
nothing changes. A conv channel with zero weights but β ≠ 0 outputs a constant that the next conv's
zero padding turns into a position-dependent term: it is kept (counted as ``constant_kept``), because
dropping it would change the output near tile borders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .channels import Layer, dense_indices, pruned_config, slice_state
from .config import DecoderConfig, EncoderConfig


@dataclass
class ShrinkReport:
    """What :func:`shrink_decoder` removed."""

    channels_before: int
    channels_after: int
    parameters_before: int
    parameters_after: int
    constant_kept: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _nonzero(t: torch.Tensor, dims: tuple[int, ...]) -> np.ndarray:
    return (t != 0).any(dim=dims).cpu().numpy()


def live_channels(state: dict[str, torch.Tensor], cfg: DecoderConfig,
                  encoder: EncoderConfig) -> tuple[dict[Layer, np.ndarray], int]:
    """The channels that can affect the output (indices into the dense layers), and how many
    constant channels had to be kept."""
    kept = dense_indices(cfg)
    levels = len(cfg.channels)
    skip_channels = [encoder.features[encoder.num_stages - 2 - u] for u in range(levels)]

    def conv_inputs(u: int, i: int) -> np.ndarray:
        """Kept input indices of conv i of level u (the first conv also reads the whole skip)."""
        if i == 0:
            return np.concatenate([kept[(u, 0)], cfg.channels[u][0] + np.arange(skip_channels[u])])
        return kept[(u, i)]

    def readers(u: int, j: int) -> tuple[torch.Tensor, int]:
        """The weights that read layer (u, j)'s output, and the dim that indexes that output."""
        last = j == len(cfg.channels[u]) - 1
        if not last:
            w = state[f"levels.{u}.blocks.{j}.conv.weight"]
            return w[torch.as_tensor(kept[(u, j + 1)])], 1
        if u + 1 < levels:
            return state[f"levels.{u + 1}.up.weight"][:, torch.as_tensor(kept[(u + 1, 0)])], 0
        return state[f"levels.{u}.head.weight"], 1

    constant = 0
    changed = True
    while changed:
        changed, constant = False, 0
        for u, lvl in enumerate(cfg.channels):
            for j in range(len(lvl)):
                idx = kept[(u, j)]
                w_out, dim = readers(u, j)
                read = _nonzero(w_out, tuple(d for d in range(w_out.dim()) if d != dim))
                if j == 0:
                    up = state[f"levels.{u}.up.weight"]  # (in, out, k...)
                    if u > 0:
                        up = up[torch.as_tensor(kept[(u - 1, len(cfg.channels[u - 1]) - 1)])]
                    zero_out = ~_nonzero(up.transpose(0, 1), (1, 2, 3, 4))
                else:
                    b = f"levels.{u}.blocks.{j - 1}."
                    conv = state[b + "conv.weight"][:, torch.as_tensor(conv_inputs(u, j - 1))]
                    flat = ~_nonzero(conv, (1, 2, 3, 4)) | (state[b + "norm.weight"] == 0).cpu().numpy()
                    shift_zero = (state[b + "norm.bias"] == 0).cpu().numpy()
                    zero_out = flat & shift_zero
                    constant += int(np.count_nonzero((flat & ~shift_zero)[idx] & read[idx]))
                alive = idx[~zero_out[idx] & read[idx]]
                if len(alive) == 0:
                    alive = idx[:1]  # a layer keeps at least one channel
                if len(alive) < len(idx):
                    kept[(u, j)] = alive
                    changed = True
    return kept, constant


def shrink_decoder(state: dict[str, torch.Tensor], cfg: DecoderConfig, encoder: EncoderConfig
                   ) -> tuple[dict[str, torch.Tensor], DecoderConfig, ShrinkReport]:
    """A narrower decoder (state, config) with the same output, and what was removed."""
    kept, constant = live_channels(state, cfg, encoder)
    small_cfg = pruned_config(cfg, kept)
    small = slice_state(state, kept, cfg, encoder)
    report = ShrinkReport(
        channels_before=sum(sum(lvl) for lvl in cfg.channels),
        channels_after=sum(sum(lvl) for lvl in small_cfg.channels),
        parameters_before=sum(t.numel() for t in state.values()),
        parameters_after=sum(t.numel() for t in small.values()),
        constant_kept=constant,
    )
    return small, small_cfg, report
