"""Stand-in weights in bpreg's layout, for tests, benchmarks and demonstrations (the real release's
``model.pt`` cannot be downloaded where clnet is built).

``random_state_dict`` gives random weights under bpreg's own tensor names (``model.<i>.*``, ``conv6.*``,
``fc7.*``), drawn as an untrained bpreg network's would be. ``fit_output_layer`` then sets ``fc7`` alone
by ridge regression so that the network's raw output on given slices equals given targets: the rest of the network stays random, and the scores
still take the whole path (VGG features, conv6, mean, fc7, bpreg's transform and cleaning). Scores fitted
to a scan's slice positions rise along that scan's body, which is what gating needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bpreg_network import BpregNetwork

#: Raw scores of the start and end landmarks in the stand-in settings (the public model's are of this size).
STAND_IN_TRANSFORM = (-2.7, 5.5)
#: Rounded positions of bpreg's landmarks on its 0-100 scale (every landmark bpreg's look-up table has;
#: its "body part examined" summary needs them all).
LANDMARK_POSITIONS = {
    "pelvis_start": 0, "femur_end": 14, "pelvis_end": 29, "kidney": 38, "lung_start": 44, "liver_end": 55,
    "lung_end": 75, "teeth": 87, "nose": 93, "eyes_end": 100, "head_end": 108, "L5": 26, "L4": 29, "L3": 34,
    "L2": 38, "L1": 42, "Th12": 45, "Th11": 48, "Th10": 51, "Th9": 54, "Th8": 57, "Th7": 60, "Th6": 63, "Th5": 66,
    "Th4": 69, "Th3": 71, "Th2": 73, "Th1": 76, "C7": 78, "C6": 80, "C5": 82, "C4": 84, "C3": 86, "C2": 87, "C1": 89,
}


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under bpreg's names (``torch.save`` it to get a ``model.pt`` like the release's).

    Drawn like an untrained bpreg network's: the VGG convolutions as torchvision initialises VGG (He
    normal, fan-out), bpreg's own layers (the 1-channel first convolution, conv6, fc7) as PyTorch
    initialises a fresh layer (uniform within 1/sqrt(fan-in)); biases small and random, not zero, so
    that a misplaced bias would show."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in BpregNetwork().state_dict().items():
        fan_in = int(np.prod(ref.shape[1:])) if ref.dim() > 1 else 512
        default = (2 * torch.rand(ref.shape, generator=gen) - 1) / fan_in ** 0.5
        if name.endswith("bias"):
            value = 0.01 * torch.randn(ref.shape, generator=gen) if name.startswith("features.") else default
        elif name.startswith("features.") and name != "features.0.weight":
            value = torch.randn(ref.shape, generator=gen) * (2.0 / (ref.shape[0] * ref.shape[2] * ref.shape[3])) ** 0.5
        else:
            value = default
        out[("model." + name[len("features."):]) if name.startswith("features.") else name] = value
    return out


def network_of(state: dict[str, torch.Tensor]) -> BpregNetwork:
    """Our network holding bpreg-named weights (a plain rename)."""
    from .bpreg_import import map_state_dict

    net = BpregNetwork()
    net.load_state_dict(map_state_dict(state, "stand-in bpreg weights"), strict=True)
    return net.eval()


@torch.no_grad()
def pooled_features(state: dict[str, torch.Tensor], slices: np.ndarray, batch: int = 32) -> np.ndarray:
    """The 512 values fc7 reads, per prepared slice (Z, S, S)."""
    net = network_of(state)
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    return torch.cat([net.pooled(x[i:i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def fit_output_layer(state: dict[str, torch.Tensor], features: np.ndarray, raw_targets: np.ndarray,
                     ridge: float = 1e-3) -> dict[str, torch.Tensor]:
    """``state`` with ``fc7`` replaced so that fc7(features) ≈ raw_targets (ridge regression on
    standardised features; ``features`` from :func:`pooled_features`)."""
    f = np.asarray(features, dtype=float)
    y = np.asarray(raw_targets, dtype=float)
    mean, sd = f.mean(axis=0), f.std(axis=0)
    sd[sd < 1e-12] = np.inf  # a constant feature gets weight 0
    z = (f - mean) / sd
    w = np.linalg.solve(z.T @ z + ridge * len(y) * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    weight = w / sd
    bias = y.mean() - float(weight @ mean)
    out = dict(state)
    out["fc7.weight"] = torch.tensor(weight[None, :], dtype=torch.float32)
    out["fc7.bias"] = torch.tensor([bias], dtype=torch.float32)
    return out


def raw_for_scores(scores: np.ndarray, transform: tuple[float, float] = STAND_IN_TRANSFORM) -> np.ndarray:
    """The raw outputs that bpreg's landmark transform turns into ``scores`` (0-100 scale)."""
    lo, hi = transform
    return lo + np.asarray(scores, dtype=float) * (hi - lo) / 100.0


def inference_settings(transform: tuple[float, float] = STAND_IN_TRANSFORM, slope_mean: float = 0.1194,
                       tangential: tuple[float, float] = (0.01, 0.206)) -> dict[str, Any]:
    """An ``inference-settings.json`` with the structure of the release's (values: stand-ins)."""
    lo, hi = transform
    table = {"original": {k: {"mean": lo + v * (hi - lo) / 100.0, "std": 0.1} for k, v in LANDMARK_POSITIONS.items()},
             "transformed": {k: {"mean": float(v), "std": 2.0} for k, v in LANDMARK_POSITIONS.items()}}
    return {"slope_mean": slope_mean, "lower_quantile_tangential_slope": tangential[0],
            "upper_quantile_tangential_slope": tangential[1], "lookuptable_train_val": table,
            "lookuptable_train": table,
            "settings": {"start-landmark": "pelvis_start", "end-landmark": "eyes_end",
                         "upper_tangential_quantile": 0.995, "lower_tangential_quantile": 0.005}}


def write_release_folder(folder: str | Path, state: dict[str, torch.Tensor],
                         settings: dict[str, Any] | None = None) -> Path:
    """A ``public_bpr_model/`` folder as the release lays it out: model.pt (state dict), config.json,
    inference-settings.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"base_model": "vgg", "name": "stand-in", "alpha": 0,
                                                    "lr": 1e-4, "model_name": "stand-in"}))
    (folder / "inference-settings.json").write_text(json.dumps(settings or inference_settings()))
    return folder


def score_targets(z_mm: np.ndarray, at_bottom: float, slope: float = 0.1194) -> np.ndarray:
    """Scores rising by ``slope`` units per mm from ``at_bottom`` at the lowest slice."""
    z = np.asarray(z_mm, dtype=float)
    return at_bottom + slope * (z - z.min())

