"""The Gaussian importance map that weights each tile's probabilities by distance from its centre.

Two forms. clnet's own (MONAI's map, peak between the two middle voxels of an even patch, with a
floor so that a voxel near a tile's edge keeps a small weight), and the official CL-Net pipeline's
(nnU-Net v1 ``_get_gaussian``: a unit impulse at ``patch // 2`` blurred by ``scipy``'s
``gaussian_filter`` with σ = patch · ``sigma_scale`` truncated at 4σ, scaled so that the peak is 1,
and zeros replaced by the smallest non-zero value). The official map is computed here in closed
form: the blurred impulse is the product of the three 1-D Gaussian kernels, and the scaling cancels
their normalisation, so each voxel is exp(-d²/2σ²) per axis, 0 beyond the truncation radius.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map

GAUSSIAN_FORMS = ("clnet", "official")


def importance_map(patch_zyx: Sequence[int], sigma_scale: float = 0.125, form: str = "clnet",
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The (z, y, x) float32 importance map of one tile, in ``form`` ``clnet`` or ``official``."""
    if form == "official":
        return torch.from_numpy(official_importance_map(patch_zyx, sigma_scale)).to(device)
    if form != "clnet":
        raise ValueError(f"unknown Gaussian form {form!r} (use one of {GAUSSIAN_FORMS})")
    importance = compute_importance_map([int(p) for p in patch_zyx], mode="gaussian", sigma_scale=sigma_scale,
                                        device=device)
    return importance.float().clamp_min(1e-4)  # edges keep a small weight so no voxel is left empty


def official_importance_map(patch_zyx: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """The official (nnU-Net v1) importance map as float32; peak 1 at ``patch // 2``."""
    per_axis = []
    for p in patch_zyx:
        sigma = float(p) * sigma_scale
        offset = np.arange(int(p), dtype=np.float64) - int(p) // 2
        weights = np.exp(-0.5 * (offset / sigma) ** 2)
        weights[np.abs(offset) > int(4.0 * sigma + 0.5)] = 0.0  # gaussian_filter's kernel radius (truncate=4)
        per_axis.append(weights)
    z, y, x = per_axis
    gaussian = z[:, None, None] * y[None, :, None] * x[None, None, :]
    gaussian = (gaussian / gaussian.max()).astype(np.float32)
    if (gaussian == 0).any():  # a zero weight would divide by zero where only this tile's edge reaches
        gaussian[gaussian == 0] = gaussian[gaussian != 0].min()
    return gaussian
