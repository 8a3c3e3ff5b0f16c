"""Structured decoder pruning: exact channel surgery, and a smaller decoder that loads and runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from clnet.checkpoint import load_model, save_model, sha256_file
from clnet.manifest import Normalization, Preprocessing
from clnet.model import CLNet, Decoder
from clnet.model.channels import dense_indices, pruned_config, slice_state
from clnet.model.factory import build_manifest, tiny_encoder
from clnet.training.common import decoder_config
from clnet.training.prune import PruneConfig, prune_decoder, select_channels
from clnet.training.synthetic import write_synthetic_dataset
from clnet.training.trainer import TrainConfig
from clnet.training.transforms import AugmentConfig


def test_removing_dead_channels_keeps_output_exactly() -> None:
    """Channels that output exactly zero can be cut out without changing the decoder's output: this
    checks that every coupled tensor (next conv, head, next upsampling, skip offset) is sliced right."""
    enc = tiny_encoder()
    torch.manual_seed(0)
    dec = Decoder(enc, decoder_config(enc, 3, 1.0, min_width=8))
    kept = dense_indices(dec.config)
    with torch.no_grad():
        for level in dec.levels:
            level.up.weight[:, ::2] = 0  # dead upsampling channels
            for block in level.blocks:
                block.norm.weight[1::2] = 0  # dead conv channels: γ = β = 0 → output 0
                block.norm.bias[1::2] = 0
    new_kept = select_channels(dec, kept, 0.5, 1)
    for (_u, j), idx in new_kept.items():
        expected = np.arange(1, len(kept[(_u, j)]), 2) if j == 0 else np.arange(0, len(kept[(_u, j)]), 2)
        assert idx.tolist() == expected.tolist()
    small = Decoder(enc, pruned_config(dec.config, new_kept))
    small.load_state_dict(slice_state(dec.state_dict(), new_kept, dec.config, enc))
    skips = CLNet(enc, {}).encoder(torch.randn(1, 1, 8, 16, 16))
    with torch.no_grad():
        assert torch.allclose(dec(skips), small(skips), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in dec.parameters())


def test_prune_command_makes_smaller_valid_decoder(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "ds", n_cases=1)
    enc = tiny_encoder()
    prep = Preprocessing(spacing_zyx=(3.0, 3.0, 3.0), patch_size_zyx=(16, 32, 32),
                         normalization=Normalization(-1000.0, 1000.0, 0.0, 300.0))
    manifest = build_manifest("base", enc, {"organs": ["Liver", "Spleen"], "other": ["Kidney_L"]}, prep)
    for e in manifest.decoders.values():
        e.config = decoder_config(enc, len(e.anatomies) + 1, 1.0, min_width=8)
    torch.manual_seed(0)
    save_model(CLNet(enc, {n: e.config for n, e in manifest.decoders.items()}), manifest, tmp_path / "base")
    cfg = TrainConfig(steps=2, batch_size=1, patch_size_zyx=(16, 32, 32), warmup_steps=1, ema_decay=0.0,
                      augment=AugmentConfig(affine_prob=0.0, intensity_prob=0.0))
    report = prune_decoder(tmp_path / "base", "organs", data, tmp_path / "pruned", cfg,
                           PruneConfig(max_dice_drop=1.0, rounds=1, fraction=0.5, min_channels=2), progress=False)
    assert "file size" in report and "time per tile" in report
    old, new = load_model(tmp_path / "base"), load_model(tmp_path / "pruned")
    old_cfg, new_cfg = old.manifest.decoders["organs"].config, new.manifest.decoders["organs"].config
    assert all(n < o for lo, ln in zip(old_cfg.channels, new_cfg.channels) for o, n in zip(lo, ln))
    f_old = tmp_path / "base" / old.manifest.decoders["organs"].file
    f_new = tmp_path / "pruned" / new.manifest.decoders["organs"].file
    assert f_new.stat().st_size < 0.6 * f_old.stat().st_size
    for f in (old.manifest.encoder_file, old.manifest.decoders["other"].file):
        assert sha256_file(tmp_path / "base" / f) == sha256_file(tmp_path / "pruned" / f)
    with torch.inference_mode():
        out = new.network(torch.randn(1, 1, 16, 32, 32))
    assert out["organs"].shape == (1, 3, 16, 32, 32)
    assert new.manifest.decoders["organs"].info["pruning"]["sparsity"] > 0.5
