"""Ready-made layouts and random-weight models (for tests, benchmarks and the start of training)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..manifest import DecoderEntry, Manifest, Normalization, Preprocessing
from .clnet import CLNet
from .config import DecoderConfig, EncoderConfig


def official_encoder() -> EncoderConfig:
    """The released CL-Net general encoder: 6 stages, 32 → 320 channels, patch multiple of (16, 32, 32)."""
    return EncoderConfig()


def tiny_encoder(features: Sequence[int] = (4, 8, 16, 16), first_stride=(1, 2, 2)) -> EncoderConfig:
    """A very small encoder for tests (4 stages by default; patch multiple of (4, 8, 8))."""
    n = len(features)
    strides = [(1, 1, 1), tuple(first_stride)] + [(2, 2, 2)] * (n - 2)
    kernels = [(1, 3, 3)] + [(3, 3, 3)] * (n - 1)
    return EncoderConfig(features=tuple(features), kernels=tuple(kernels), strides=tuple(strides))


def build_manifest(
    name: str,
    encoder: EncoderConfig,
    decoders: Mapping[str, Sequence[str]],
    preprocessing: Preprocessing | None = None,
    width_scale: float = 1.0,
    **fields,
) -> Manifest:
    """A manifest for ``decoders`` (decoder name → its anatomies, channel order) with default widths."""
    entries = {
        d: DecoderEntry(d, list(names), DecoderConfig.default_for(encoder, len(names) + 1, width_scale))
        for d, names in decoders.items()
    }
    prep = preprocessing or Preprocessing(normalization=Normalization(-1024, 1500, -300.0, 500.0))
    return Manifest(name=name, encoder=encoder, preprocessing=prep, decoders=entries, **fields)


def random_network(manifest: Manifest, seed: int = 0) -> CLNet:
    torch.manual_seed(seed)
    return CLNet(manifest.encoder, {n: e.config for n, e in manifest.decoders.items()})


def save_random_model(directory: str | Path, manifest: Manifest, seed: int = 0) -> Path:
    """Write a random-weight model folder (clearly flagged as such in its provenance)."""
    from ..checkpoint import save_model

    manifest.provenance.setdefault("weights", f"random initialisation (seed {seed}); not trained")
    save_model(random_network(manifest, seed), manifest, directory)
    return Path(directory)
