"""Self-supervised training of the slice-position model, then a one-offset landmark calibration.

Training needs no labels: for random groups of slices of one scan with known z distance, the loss asks
that (1) the scores come in the slices' z order and (2) score differences equal the physical distance
times bpreg's slope (0.1194 units/mm), so the scale is already right and only an offset is unknown.
Every slice is augmented on its own (shift, scale, rotation, left-right flip, intensity, noise) so the
network has to use anatomy, not the exact pixels. Labels are only used to place the offset, from
landmarks such as the top of the femoral heads (:data:`LANDMARK_SCORES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..errors import InputError
from .model import (
    LANDMARK_SCORES,
    SLOPE_UNITS_PER_MM,
    BodyPartConfig,
    BodyPartModel,
    clean_scores,
    orient_lps,
    slice_z_mm,
)

#: Landmark name -> the labels (TotalSegmentator "total" names) whose extent defines it, and which end.
LANDMARK_LABELS: dict[str, tuple[tuple[str, ...], str]] = {
    "femur_end": (("femur_left", "femur_right"), "top"),
    "pelvis_start": (("hip_left", "hip_right"), "bottom"),
}


def landmarks_from_labels(labels: sitk.Image, label_values: Mapping[str, int]) -> dict[str, float]:
    """World z (mm) of the landmarks in :data:`LANDMARK_LABELS` that a label map shows completely.

    An end is only used when it lies inside the scan (not on its first or last slice), because a
    structure cut by the field of view has its true end outside it.
    """
    lab = sitk.GetArrayViewFromImage(orient_lps(labels))
    z = slice_z_mm(orient_lps(labels))
    present = _slices_with_labels(lab)
    found: dict[str, float] = {}
    for name, (structures, end) in LANDMARK_LABELS.items():
        ends = []
        for s in structures:
            value = label_values.get(s)
            if value is None or value not in present:
                continue
            idx = present[value]
            k = int(idx.max()) if end == "top" else int(idx.min())
            if 0 < k < lab.shape[0] - 1:
                # The true end lies between this slice and the next one outwards: take the midpoint.
                ends.append(0.5 * (z[k] + z[k + 1 if end == "top" else k - 1]))
        if ends:
            found[name] = float(np.mean(ends))
    return found


def _slices_with_labels(lab: np.ndarray) -> dict[int, np.ndarray]:
    """label value -> sorted z indices where it occurs (one pass over the slices)."""
    hits: dict[int, list[int]] = {}
    for k in range(lab.shape[0]):
        for v in np.unique(lab[k]):
            if v:
                hits.setdefault(int(v), []).append(k)
    return {v: np.asarray(ks) for v, ks in hits.items()}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random in-plane affine + intensity changes, independently per slice. x: (N, 1, S, S) in [-1, 1]."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    scale, angle = u(0.85, 1.15), u(-0.15, 0.15)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, u(-0.12, 0.12)], 1),
                         torch.stack([sin * flip, cos, u(-0.12, 0.12)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Shift so that air is 0: grid_sample fills outside with zeros, which should be air, not soft tissue.
    y = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    y = y * u(0.9, 1.1)[:, None, None, None] + u(-0.08, 0.08)[:, None, None, None]
    y = y + torch.randn(y.shape, generator=gen) * u(0.0, 0.03)[:, None, None, None]
    return y.clamp(-1.0, 1.0)


def _loss(scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Order + equidistance loss for (B, K) scores of slices sorted by z (mm)."""
    ds = scores[:, 1:] - scores[:, :-1]
    dz = (z[:, 1:] - z[:, :-1]).clamp_min(1e-3)
    # Ordering: neighbours must come in z order (saturates once the step is about the expected one).
    order = F.softplus(-4.0 * ds / (SLOPE_UNITS_PER_MM * dz)).mean()
    # Equidistance with a known scale: every pair's score difference = slope * distance.
    i, j = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1)
    diff = (scores[:, j] - scores[:, i]) - SLOPE_UNITS_PER_MM * (z[:, j] - z[:, i])
    return order + F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=1.0)


def train_bodypart(images: Sequence[sitk.Image], steps: int, seed: int,
                   landmarks: Sequence[Mapping[str, float]] | None = None, *,
                   config: BodyPartConfig | None = None, batch: int = 16, group: int = 4, lr: float = 2e-3,
                   info: Mapping[str, object] | None = None,
                   progress: Callable[[int, float], None] | None = None) -> BodyPartModel:
    """Train a model on ``images`` (CTs, any orientation) and calibrate it.

    ``landmarks``: per image, landmark name -> world z in mm (see :func:`landmarks_from_labels`); names
    must be keys of :data:`LANDMARK_SCORES`. Without landmarks the offset stays 0 (only differences are
    meaningful). ``progress(step, loss)`` is called every 50 steps.
    """
    if not images:
        raise InputError("Training the body-part model needs at least one image.")
    if landmarks is not None and len(landmarks) != len(images):
        raise InputError("Give one landmark dictionary per training image (may be empty).")
    for lm in landmarks or []:
        unknown = set(lm) - set(LANDMARK_SCORES)
        if unknown:
            raise InputError(f"Unknown landmark(s) {sorted(unknown)}.", f"Known: {sorted(LANDMARK_SCORES)}.")
    model = BodyPartModel.create(config, seed)
    data = [model.prepare(img) for img in images]
    data = [(torch.from_numpy(x), torch.from_numpy(z.astype(np.float32))) for x, z in data]
    if any(len(x) < group for x, _ in data):
        raise InputError(f"Every training image needs at least {group} slices.")
    weights = torch.tensor([float(len(x)) for x, _ in data])

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = model.network.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for step in range(steps):
        xs, zs = [], []
        for _ in range(batch):
            k = int(torch.multinomial(weights, 1, generator=gen))
            x, z = data[k]
            idx = torch.randperm(len(x), generator=gen)[:group].sort().values
            xs.append(x[idx])
            zs.append(z[idx])
        x = _augment(torch.cat(xs)[:, None], gen)
        z = torch.stack(zs)
        # LPS slices are already sorted by z (index grows superior), so the groups are sorted too.
        loss = _loss(net(x).view(batch, group), z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress(step, loss.item())
    net.eval()

    # Calibration: one offset, the mean of (assigned score - predicted score) over all landmarks.
    deltas = []
    residual_info = []
    for (x, z), lm in zip(data, landmarks or [{} for _ in data]):
        if not lm:
            continue
        cleaned, _, _ = clean_scores(z.numpy().astype(float), model.raw_scores(x.numpy()))
        for name, z_mm in lm.items():
            predicted = float(np.interp(z_mm, z.numpy(), cleaned))
            deltas.append(LANDMARK_SCORES[name] - predicted)
            residual_info.append({"landmark": name, "z_mm": round(float(z_mm), 2)})
    model.offset = float(np.mean(deltas)) if deltas else 0.0
    model.info = {"trained_on": [], **dict(info or {}), "steps": steps, "seed": seed, "batch": batch,
                  "group": group, "lr": lr, "landmarks": residual_info, "calibrated": bool(deltas)}
    return model
