"""Pieces shared by the training commands: encoder presets, preprocessing, provenance, devices."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..errors import ClnetError
from ..manifest import Normalization, Preprocessing
from ..model import DecoderConfig, EncoderConfig
from ..model.factory import official_encoder, tiny_encoder
from .datasets import CaseSpec


def encoder_preset(name: str) -> EncoderConfig:
    """``tiny`` (tests, 4 stages 4→16), ``small`` (5 stages 16→96, CPU demo), ``official`` (6 stages 32→320)."""
    if name == "tiny":
        return tiny_encoder()
    if name == "small":
        return tiny_encoder((16, 32, 48, 64, 96))
    if name == "official":
        return official_encoder()
    raise ClnetError(f"Unknown encoder preset {name!r}.", "Use tiny, small or official.")


def decoder_config(encoder: EncoderConfig, num_classes: int, width_scale: float = 1.0,
                   min_width: int = 16) -> DecoderConfig:
    """Encoder-mirrored widths scaled by ``width_scale`` but never below ``min_width`` (nor above the
    encoder's own width), so the full-resolution level keeps enough channels for many classes."""
    levels = []
    for stage in range(encoder.num_stages - 2, -1, -1):
        f = encoder.features[stage]
        w = max(min(min_width, f), int(round(f * width_scale)), 1)
        levels.append((w,) * (1 + encoder.convs_per_stage))
    return DecoderConfig(num_classes=num_classes, channels=tuple(levels))


def check_patch(patch: Sequence[int], encoder: EncoderConfig) -> tuple[int, int, int]:
    p = tuple(int(v) for v in patch)
    bad = [f"{v} (axis {a})" for a, (v, d) in enumerate(zip(p, encoder.divisor)) if v % d]
    if len(p) != 3 or bad:
        raise ClnetError(f"Patch size {p} is not a multiple of the encoder's divisor {encoder.divisor}: {bad}.",
                         "Pick patch sizes that are multiples of the divisor per axis (z, y, x).")
    return p  # type: ignore[return-value]


def auto_normalization(specs: Sequence[CaseSpec], max_cases: int = 20, seed: int = 0) -> Normalization:
    """nnU-Net's CT scheme from the training data: clip to the 0.5/99.5 percentiles of labelled
    voxels, then z-score with their mean and standard deviation."""
    rng = np.random.default_rng(seed)
    samples = []
    for s in list(specs)[:max_cases]:
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(s.image)))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(s.label)))
        if img.shape != lab.shape:
            continue  # different grids: skip rather than resample just for statistics
        vals = np.asarray(img)[np.asarray(lab) > 0].astype(np.float32)
        if vals.size:
            samples.append(rng.choice(vals, size=min(vals.size, 200_000), replace=False))
    if not samples:
        return Normalization(-1024.0, 1500.0, -300.0, 500.0)
    v = np.concatenate(samples)
    lo, hi = np.percentile(v, [0.5, 99.5])
    v = np.clip(v, lo, hi)
    return Normalization(float(round(lo, 1)), float(round(hi, 1)), float(round(v.mean(), 2)),
                         float(round(max(v.std(), 1.0), 2)))


def pad_value(prep: Preprocessing) -> float:
    """The normalised value of air (``clip_low``): what the inference tiles are padded with."""
    n = prep.normalization
    return float((n.clip_low - n.mean) / n.std)


def select_training_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClnetError("CUDA was requested but is not available.", "Use --device cpu.")
    return dev


def provenance(kind: str, data: str, steps: int, seed: int, seconds: float, device: torch.device,
               world_size: int, config: dict, extra: dict | None = None) -> dict:
    """What produced these weights, for the manifest."""
    return {
        "kind": kind,
        "data": str(data),
        "steps": steps,
        "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in ["clnet", *sys.argv[1:]]),
        "clnet_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.platform(),
        "device": str(device),
        "world_size": world_size,
        "training_seconds": round(seconds, 1),
        "config": config,
        **(extra or {}),
    }


def parse_decoder_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME=a,b,c`` or ``NAME=@file`` (names separated by commas or new lines)."""
    if "=" not in spec:
        raise ClnetError(f"--decoder {spec!r} must look like NAME=anatomy1,anatomy2,...")
    name, rest = spec.split("=", 1)
    return name.strip(), split_names(rest)


def split_names(text: str | Sequence[str]) -> list[str]:
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if item.startswith("@"):
            path = Path(item[1:])
            if not path.is_file():
                raise ClnetError(f"Anatomy list file {path} does not exist.")
            item = path.read_text(encoding="utf-8").replace("\n", ",")
        out += [s.strip() for s in item.split(",") if s.strip() and not s.strip().startswith("#")]
    return out
