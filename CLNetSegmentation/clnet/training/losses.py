"""Partial-label Dice + cross-entropy, deep supervision and distillation losses.

Partial-label rule ("marginal" loss): for each scan, the decoder classes whose anatomy the scan does
not label are *unknown*. Their softmax probability is merged into the background before the
cross-entropy (a voxel labelled background may be background or any unknown anatomy, so predicting
an unknown anatomy there costs nothing), and the Dice term is averaged over known foreground
classes only. Anatomies the scan labels but that are absent from it are known: they are trained
towards empty, as they should be.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def merged_log_probs(logits: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with unknown classes folded into background.

    ``logits`` (B, C, ...), ``known`` (B, C) bool with ``known[:, 0]`` True. Returns (B, C, ...) where
    channel 0 is log(p_bg + Σ p_unknown) and unknown channels are -inf (never a target).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    shape = known.shape + (1,) * (logits.dim() - 2)
    k = known.view(shape)
    bg_set = ~k
    bg_set[:, 0] = True
    neg_inf = torch.finfo(logp.dtype).min
    bg = torch.logsumexp(torch.where(bg_set, logp, torch.full_like(logp, neg_inf)), dim=1, keepdim=True)
    out = torch.where(k, logp, torch.full_like(logp, neg_inf))
    return torch.cat([bg, out[:, 1:]], dim=1)


def partial_dice_ce(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                    dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """Dice + CE under the partial-label rule. ``target`` (B, ...) long decoder classes."""
    logp = merged_log_probs(logits, known)
    ce = F.nll_loss(logp, target, reduction="mean")
    if dice_weight == 0:
        return ce_weight * ce
    probs = torch.softmax(logits.float(), dim=1)
    c = logits.shape[1]
    onehot = F.one_hot(target, c).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)  # (B, C)
    fg_known = known.clone()
    fg_known[:, 0] = False  # background Dice adds little and is ill-defined when classes are merged
    n = fg_known.sum()
    dice_loss = (1 - dice)[fg_known].sum() / n if n > 0 else probs.new_zeros(())
    return ce_weight * ce + dice_weight * dice_loss


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour target for a coarser deep-supervision output."""
    if tuple(target.shape[1:]) == tuple(shape):
        return target
    t = F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")
    return t[:, 0].long()


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net-style weights: halve per level, drop the coarsest, normalise to sum 1."""
    w = [0.5**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


def decoder_loss(output, target: torch.Tensor, known: torch.Tensor, **kw) -> torch.Tensor:
    """Loss for one decoder's output: a tensor, or a list (full resolution first) for deep supervision."""
    if isinstance(output, torch.Tensor):
        return partial_dice_ce(output, target, known, **kw)
    total = output[0].new_zeros((), dtype=torch.float32)
    for w, out in zip(deep_supervision_weights(len(output)), output):
        if w > 0:
            total = total + w * partial_dice_ce(out, downsample_target(target, out.shape[2:]), known, **kw)
    return total


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened softmax, scaled by T² (Hinton et al.)."""
    t = temperature
    log_s = F.log_softmax(student.float() / t, dim=1)
    p_t = F.softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_s, p_t, reduction="none").sum(1).mean() * t * t
