"""Exponential moving average of weights; the saved model uses the averaged weights."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of a module's floating-point state: ``shadow ← d·shadow + (1 − d)·current``.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so short
    runs are not dominated by the random initial weights.
    """

    def __init__(self, module: nn.Module, decay: float = 0.99) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        module.load_state_dict(self.shadow, strict=True)

    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str, updates: int) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(tensors[f"{prefix}{k}"])
        self.updates = int(updates)
