"""``clnet prune``: progressive structured pruning of one decoder, lottery-ticket style with distillation.

Whole output channels are removed, so the pruned decoder is a genuinely narrower network (a smaller
``DecoderConfig.channels``), not a masked one: its file shrinks and it runs faster.

Channel importance ("L1 magnitude"): for a conv followed by instance norm, the L1 magnitude of the
norm's scale |γ| (the norm cancels any scale in the filter itself, so the filter's L1 norm says
nothing about the channel's output); for the transposed-conv upsampling, which has no norm, the L1
norm of the channel's filter. Coupling is respected: a conv's output channels are the next conv's
input channels; a level's last conv also feeds the 1×1 head and the next level's upsampling; the
upsampling's outputs are concatenated before the skip channels of the level's first conv.

Each round prunes ``fraction`` of every prunable layer's remaining channels, rewinds the surviving
weights to their early values (a snapshot from early in training when given, else the dense trained
weights), retrains briefly with the label loss + KL distillation from the unpruned teacher, and
evaluates Dice. Pruning stops at the last round whose mean Dice stays within ``max_dice_drop`` of the
teacher's (if the very first round overshoots, it is retried once with half the fraction); the encoder and all other decoders are copied byte for byte.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from ..checkpoint import load_model, save_model
from ..errors import ClnetError
from ..manifest import Manifest
from ..model import CLNet, Decoder
from ..model.channels import Layer, dense_indices, pruned_config, slice_state
from .add_decoder import verify_continual
from .common import check_patch, pad_value, provenance, select_training_device
from .datasets import catalog_labels, load_dataset, prepare_cases
from .evaluation import dice_per_anatomy, mean_dice
from .trainer import TrainConfig, fit, seed_everything


@dataclass
class PruneConfig:
    max_dice_drop: float = 0.02
    rounds: int = 3
    fraction: float = 0.3
    min_channels: int = 4
    rewind: str | None = None  # safetensors of early decoder weights (dense shapes)


def channel_scores(decoder: Decoder) -> dict[Layer, np.ndarray]:
    """Importance of every output channel of every prunable layer (see the module docstring)."""
    out: dict[Layer, np.ndarray] = {}
    for u, level in enumerate(decoder.levels):
        out[(u, 0)] = level.up.weight.detach().abs().sum(dim=(0, 2, 3, 4)).cpu().numpy()
        for i, block in enumerate(level.blocks):
            out[(u, i + 1)] = block.norm.weight.detach().abs().cpu().numpy()
    return out


def select_channels(decoder: Decoder, kept: dict[Layer, np.ndarray], fraction: float,
                    min_channels: int) -> dict[Layer, np.ndarray]:
    """Drop the weakest ``fraction`` of each layer's current channels; returns kept *dense* indices."""
    scores = channel_scores(decoder)
    new: dict[Layer, np.ndarray] = {}
    for layer, idx in kept.items():
        n = len(idx)
        n_keep = max(min(min_channels, n), int(round(n * (1.0 - fraction))))
        order = np.argsort(-scores[layer], kind="stable")[:n_keep]
        new[layer] = np.sort(idx[np.sort(order)])
    return new


def decoder_bytes(decoder: Decoder) -> int:
    return len(save_bytes({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}))


def time_per_tile(network, name: str, patch: Sequence[int], repeats: int = 5) -> float:
    """Seconds for encoder + this decoder on one tile (CPU, batch 1): the fastest of ``repeats`` runs,
    which is the least disturbed by other load on the machine."""
    x = torch.zeros((1, 1, *patch))
    times = []
    with torch.inference_mode():
        network(x, decoders=[name])
        for _ in range(repeats):
            t = time.perf_counter()
            network(x, decoders=[name])
            times.append(time.perf_counter() - t)
    return float(min(times))


def prune_decoder(
    model_dir: str | Path,
    name: str,
    data: str | Path,
    output: str | Path,
    cfg: TrainConfig,
    pc: PruneConfig,
    label_map: str | Path | None = None,
    device: str = "auto",
    work_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Prune decoder ``name`` of ``model_dir`` into ``output``; returns the printed report table."""
    model_dir, output = Path(model_dir), Path(output)
    if output.exists() and not overwrite:
        raise ClnetError(f"{output} already exists.", "Choose another -o folder or pass --overwrite.")
    loaded = load_model(model_dir)
    old: Manifest = loaded.manifest
    if name not in old.decoders:
        raise ClnetError(f"Model {old.name} has no decoder {name!r}.", f"Available: {list(old.decoders)}.")
    dev = select_training_device(device)
    network = loaded.network
    prep = old.preprocessing
    check_patch(cfg.patch_size_zyx, old.encoder)
    seed_everything(cfg.seed, cfg.deterministic)
    entry = old.decoders[name]
    labels = catalog_labels(entry.anatomies)
    cases = prepare_cases(load_dataset(data, label_map), prep,
                          cache_dir=cache_dir or (Path(work_dir) if work_dir else output.parent / f"{output.name}.work") / "cache")
    work = Path(work_dir) if work_dir else output.parent / f"{output.name}.work"
    pad = pad_value(prep)

    def evaluate(net) -> dict[str, float]:
        return dice_per_anatomy(net.cpu(), name, entry.anatomies, labels, cases, prep.patch_size_zyx, prep.overlap,
                                pad, torch.device("cpu"))

    teacher: Decoder = network.decoders[name]
    dense_cfg = teacher.config
    dense_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    rewind_state = load_file(pc.rewind) if pc.rewind else dense_state
    if set(rewind_state) != set(dense_state) or any(rewind_state[k].shape != v.shape for k, v in dense_state.items()):
        raise ClnetError(f"--rewind {pc.rewind} does not hold weights of decoder {name}'s dense architecture.")
    base_scores = evaluate(network)
    base = mean_dice(base_scores)
    before = {"params": sum(p.numel() for p in teacher.parameters()), "bytes": decoder_bytes(teacher),
              "tile_s": time_per_tile(network, name, prep.patch_size_zyx), "dice": base}

    kept = dense_indices(dense_cfg)
    best = None  # (kept, decoder, scores)
    rounds_log = []
    t0 = time.perf_counter()
    current = teacher
    fraction = pc.fraction
    for r in range(pc.rounds):
        cand = select_channels(current, kept, fraction, pc.min_channels)
        if all(len(cand[k]) == len(kept[k]) for k in kept):
            break  # nothing left to remove
        student = Decoder(old.encoder, pruned_config(dense_cfg, cand))
        student.load_state_dict(slice_state(rewind_state, cand, dense_cfg, old.encoder))
        trial = CLNet(old.encoder, {})
        trial.encoder = network.encoder  # shared and frozen: the student trains on the real features
        trial.decoders[name] = student
        rcfg = copy.deepcopy(cfg)
        rcfg.seed = cfg.seed + r
        fit(trial, {name: labels}, cases, rcfg, pad, train_encoder=False, device=dev,
            work_dir=work / f"round{r + 1}", resume=False, teachers={name: copy.deepcopy(teacher)}, progress=progress)
        scores = evaluate(trial)
        d = mean_dice(scores)
        params = sum(p.numel() for p in student.parameters())
        rounds_log.append((r + 1, params, d))
        if base - d > pc.max_dice_drop:
            if best is not None or fraction / 2 < 0.05:
                break
            fraction /= 2  # too much at once: retry the first round more gently
            continue
        best, kept, current = (cand, student, scores), cand, student
    if best is None:
        raise ClnetError(
            f"Even the first pruning round lost more than {pc.max_dice_drop} mean Dice on decoder {name}; "
            "nothing was written.", "Use a smaller --fraction, more --steps or a larger --max-dice-drop.")
    cand, student, scores = best
    network.decoders[name] = student
    manifest = Manifest.from_dict(copy.deepcopy(old.to_dict()))
    new_entry = manifest.decoders[name]
    new_entry.config = student.config
    new_entry.sha256 = ""  # changed: must be re-serialised, not copied
    after = {"params": sum(p.numel() for p in student.parameters()), "bytes": decoder_bytes(student),
             "tile_s": time_per_tile(network.cpu(), name, prep.patch_size_zyx), "dice": mean_dice(scores)}
    new_entry.info["pruning"] = {
        "method": "structured channel pruning, |gamma| / filter-L1 importance, rewinding, KD from dense teacher",
        "rewind": "early-training snapshot" if pc.rewind else "dense trained weights",
        "dense_channels": [list(c) for c in dense_cfg.channels],
        "params_before": before["params"], "params_after": after["params"],
        "sparsity": round(1 - after["params"] / before["params"], 4),
        "mean_dice_before": round(base, 4), "mean_dice_after": round(after["dice"], 4),
        "max_dice_drop": pc.max_dice_drop,
        "provenance": provenance("clnet prune", str(data), cfg.steps, cfg.seed, time.perf_counter() - t0, dev, 1,
                                 cfg.to_dict(), {"rounds": [list(x) for x in rounds_log]}),
    }
    dice = manifest.metrics.setdefault("dice_model_grid_training_scans", {})
    dice[name] = {"mean": round(after["dice"], 4), **{k: round(v, 4) for k, v in scores.items()}}
    save_model(network, manifest, output, overwrite=overwrite, copy_from=model_dir)
    verify_continual(model_dir, output, old, [d for d in old.decoders if d != name])
    return format_report(name, before, after, rounds_log, output)


def format_report(name: str, before: dict, after: dict, rounds: list, output: Path) -> str:
    buf = io.StringIO()
    buf.write(f"Pruning decoder {name}\n")
    buf.write("round  params     mean Dice\n")
    for r, p, d in rounds:
        buf.write(f"{r:5d}  {p:9d}  {d:.4f}\n")
    buf.write(f"\n{'':22}{'before':>12}{'after':>12}\n")
    buf.write(f"{'parameters':22}{before['params']:>12d}{after['params']:>12d}\n")
    buf.write(f"{'sparsity':22}{0:>12.1%}{1 - after['params'] / before['params']:>12.1%}\n")
    buf.write(f"{'file size (KiB)':22}{before['bytes'] / 1024:>12.1f}{after['bytes'] / 1024:>12.1f}\n")
    buf.write(f"{'time per tile (ms)':22}{before['tile_s'] * 1e3:>12.1f}{after['tile_s'] * 1e3:>12.1f}\n")
    buf.write(f"{'mean Dice':22}{before['dice']:>12.4f}{after['dice']:>12.4f}\n")
    buf.write(f"wrote {output} (encoder and other decoders byte-identical)\n")
    return buf.getvalue()
