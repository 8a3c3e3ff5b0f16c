"""``clnet train``: stage 1 — the general encoder and the first decoder(s), trained together."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..catalog import Catalog
from ..catalog.user import catalog_for
from ..checkpoint import save_model
from ..errors import ClnetError
from ..manifest import DecoderEntry, Manifest, Preprocessing
from ..model import CLNet
from .common import (
    auto_normalization,
    check_patch,
    decoder_config,
    encoder_preset,
    pad_value,
    provenance,
    select_training_device,
)
from .datasets import PreparedCase, catalog_labels, load_dataset, prepare_cases, resolve_anatomies
from .distributed import barrier, cleanup, init_distributed
from .evaluation import dice_per_anatomy, mean_dice
from .trainer import TrainConfig, fit, seed_everything

log = logging.getLogger(__name__)


def check_coverage(cases: Sequence[PreparedCase], decoder: str, names: Sequence[str],
                   catalog: Catalog | None = None) -> list[str]:
    """Anatomies no scan labels (a user error when it is all of them; a warning otherwise)."""
    labelled = set().union(*(c.labelled for c in cases))
    missing = [n for n, lab in zip(names, catalog_labels(names, catalog)) if lab not in labelled]
    if len(missing) == len(names):
        raise ClnetError(f"No scan in the data labels any anatomy of decoder {decoder}.",
                         "Check the label maps (dataset.json labels / --label-map) against the anatomy names.")
    if missing:
        log.warning("decoder %s: no scan labels %s; these outputs will stay untrained", decoder, ", ".join(missing))
    return missing


def save_rewind_snapshot(directory: Path, network: CLNet, heads: Sequence[str]) -> None:
    """Early decoder weights, for lottery-ticket rewinding when the decoder is pruned later."""
    directory.mkdir(parents=True, exist_ok=True)
    for h in heads:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in network.decoders[h].state_dict().items()}
        save_file(tensors, str(directory / f"{h}.safetensors"))


def evaluate_heads(network: CLNet, manifest: Manifest, heads: Sequence[str], cases: Sequence[PreparedCase],
                   device: torch.device) -> dict:
    """Model-grid Dice per anatomy on ``cases`` for each head (plus its mean)."""
    prep = manifest.preprocessing
    out = {}
    for h in heads:
        names = manifest.decoders[h].anatomies
        scores = dice_per_anatomy(network, h, names, catalog_labels(names, catalog_for(manifest)), cases,
                                  prep.patch_size_zyx,
                                  prep.overlap, pad_value(prep), device)
        out[h] = {"mean": round(mean_dice(scores), 4), **{k: round(v, 4) for k, v in scores.items()}}
    return out


def train_new_model(
    data: str | Path,
    decoders: Mapping[str, Sequence[str]],
    output: str | Path,
    cfg: TrainConfig,
    encoder: str = "small",
    width_scale: float = 0.5,
    spacing_zyx: Sequence[float] = (1.5, 1.5, 1.5),
    fast_spacing_zyx: Sequence[float] | None = None,
    label_map: str | Path | None = None,
    device: str = "auto",
    work_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    name: str | None = None,
    description: str = "",
    demo: bool = True,
    clinical_use: bool = False,
    evaluate: bool = True,
    overwrite: bool = False,
    rewind_step: int | None = None,
    progress: bool = True,
) -> Manifest | None:
    """Train encoder + ``decoders`` (name → anatomy names) and write a model folder (rank 0 only).

    Returns the written manifest (None on other ranks).
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ClnetError(f"{output} already exists.", "Choose another -o folder or pass --overwrite.")
    dev = select_training_device(device)
    info, dev = init_distributed(dev)
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        specs = load_dataset(data, label_map)
        heads = {d: resolve_anatomies(names) for d, names in decoders.items()}
        if not heads:
            raise ClnetError("Give at least one --decoder NAME=anatomy1,anatomy2,...")
        enc = encoder_preset(encoder)
        patch = check_patch(cfg.patch_size_zyx, enc)
        prep = Preprocessing(
            spacing_zyx=tuple(float(s) for s in spacing_zyx),  # type: ignore[arg-type]
            fast_spacing_zyx=tuple(float(s) for s in fast_spacing_zyx) if fast_spacing_zyx else None,  # type: ignore[arg-type]
            patch_size_zyx=patch,
            normalization=auto_normalization(specs, seed=cfg.seed),
        )
        work = Path(work_dir) if work_dir else output.parent / f"{output.name}.work"
        cases = prepare_cases(specs, prep, cache_dir=cache_dir or work / "cache")
        for d, names in heads.items():
            check_coverage(cases, d, names)
        entries = {
            d: DecoderEntry(d, names, decoder_config(enc, len(names) + 1, width_scale),
                            info={"stage": "stage1 (trained with the encoder)"})
            for d, names in heads.items()
        }
        manifest = Manifest(name=name or output.name, encoder=enc, preprocessing=prep, decoders=entries,
                            description=description, demo=demo, clinical_use=clinical_use)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        network = CLNet(enc, {d: e.config for d, e in entries.items()})
        rewind_at = rewind_step if rewind_step is not None else max(1, cfg.steps // 20)

        def on_step(step: int, _loss: float) -> None:
            if step + 1 == rewind_at and info.is_main:
                save_rewind_snapshot(work / "rewind", network, list(heads))

        result = fit(network, {d: catalog_labels(n) for d, n in heads.items()}, cases, cfg, pad_value(prep),
                     train_encoder=True, device=dev, work_dir=work, resume=resume, dist_info=info,
                     progress=progress, on_step=on_step)
        if not info.is_main:
            barrier(info)
            return None
        network.cpu().eval()
        if evaluate:
            manifest.metrics["dice_model_grid_training_scans"] = evaluate_heads(
                network, manifest, list(heads), cases, torch.device("cpu"))
        manifest.provenance = provenance(
            "clnet train (stage 1: encoder + first decoders)", str(data), cfg.steps, cfg.seed, result.seconds, dev,
            info.world_size, cfg.to_dict(),
            {"scans": [c.case_id for c in cases], "final_loss": round(result.final_loss, 4),
             "weights": "EMA of the training weights" if cfg.ema_decay > 0 else "last training step",
             "encoder_preset": encoder, "decoder_width_scale": width_scale},
        )
        for e in manifest.decoders.values():
            e.info.update({"steps": cfg.steps, "scans": len(cases)})
        save_model(network, manifest, output, overwrite=overwrite)
        barrier(info)
        return manifest
    finally:
        cleanup(info)
