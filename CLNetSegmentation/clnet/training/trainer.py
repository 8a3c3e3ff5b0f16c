"""The training loop shared by ``train`` (encoder + decoders), ``add-decoder`` and ``prune``.

One :func:`fit` call trains a set of heads (decoder name → catalog labels of its classes), with or
without the encoder. Everything needed to continue is checkpointed as safetensors + JSON (never a
pickle): trainable weights, EMA weights, optimizer tensors, and the step. The learning rate is a pure
function of the step and patches are re-seeded per step, so a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..inference.sliding_window import autocast_context
from ..model import CLNet
from .datasets import PreparedCase
from .distributed import DistInfo, all_mean, barrier, wrap
from .ema import EMA
from .losses import decoder_loss, distillation_kl
from .transforms import AugmentConfig, PatchSampler

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


@dataclass
class TrainConfig:
    """Optimisation settings (stored in the manifest's provenance)."""

    steps: int = 1000
    batch_size: int = 2
    patch_size_zyx: tuple[int, int, int] = (64, 96, 96)
    optimizer: str = "adamw"  # or "sgd" (Nesterov, momentum 0.99, as nnU-Net)
    lr: float = 2e-3
    weight_decay: float = 3e-5
    schedule: str = "poly"  # or "cosine"
    warmup_steps: int = 20
    grad_clip: float = 12.0
    deep_supervision: bool = True
    ema_decay: float = 0.99  # 0 disables EMA
    fg_fraction: float = 0.67
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0  # only with teachers (pruning)
    kd_temperature: float = 2.0
    seed: int = 0
    deterministic: bool = False
    amp: bool = True  # CUDA only
    checkpoint_every: int = 100
    log_every: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size_zyx"] = list(self.patch_size_zyx)
        d["augment"] = self.augment.to_dict()
        return d


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then polynomial (power 0.9) or cosine decay to zero at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (1.0 - progress) ** 0.9


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw or sgd)")


class _Step(nn.Module):
    """Encoder (trainable or frozen) + the trained heads as one module, so DDP can wrap it."""

    def __init__(self, network: CLNet, heads: Sequence[str], train_encoder: bool, deep_supervision: bool) -> None:
        super().__init__()
        self.encoder = network.encoder
        self.heads = nn.ModuleDict({h: network.decoders[h] for h in heads})
        self.train_encoder = train_encoder
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor):
        if self.train_encoder:
            skips = self.encoder(x)
        else:
            with torch.no_grad():  # frozen encoder: no graph, no gradients, weights untouched
                skips = self.encoder(x)
        return {h: m(skips, self.deep_supervision) for h, m in self.heads.items()}, skips


@dataclass
class FitResult:
    steps: int
    final_loss: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def _trainable(network: CLNet, heads: Sequence[str], train_encoder: bool) -> dict[str, nn.Module]:
    mods: dict[str, nn.Module] = {f"decoder.{h}": network.decoders[h] for h in heads}
    if train_encoder:
        mods = {"encoder": network.encoder, **mods}
    return mods


# ------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(directory: Path, step: int, modules: Mapping[str, nn.Module], emas: Mapping[str, EMA],
                    optimizer: torch.optim.Optimizer, cfg: TrainConfig, extra: dict | None = None) -> None:
    """Write the resumable state as safetensors + JSON, atomically (tmp files, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"model/{name}/{k}"] = v.detach().cpu().contiguous()
    for name, e in emas.items():
        tensors.update(e.state_tensors(f"ema/{name}/"))
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(pid), {})[k] = v
    state = {
        "step": step,
        "config": cfg.to_dict(),
        "ema_updates": {n: e.updates for n, e in emas.items()},
        "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
        "extra": extra or {},
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp_t, tmp_s = directory / (CHECKPOINT_TENSORS + ".tmp"), directory / (CHECKPOINT_STATE + ".tmp")
    save_file(tensors, str(tmp_t))
    tmp_s.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp_t, directory / CHECKPOINT_TENSORS)
    os.replace(tmp_s, directory / CHECKPOINT_STATE)


def load_checkpoint(directory: Path, modules: Mapping[str, nn.Module], emas: Mapping[str, EMA],
                    optimizer: torch.optim.Optimizer) -> int:
    """Restore what :func:`save_checkpoint` wrote; returns the step to continue from."""
    tensors = load_file(str(directory / CHECKPOINT_TENSORS))
    state = json.loads((directory / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    for name, m in modules.items():
        prefix = f"model/{name}/"
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    for name, e in emas.items():
        e.load_tensors(tensors, f"ema/{name}/", state["ema_updates"][name])
    per_param: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, pid, key = k.split("/", 2)
            per_param.setdefault(int(pid), {})[key] = v
    for pid, sc in state["optimizer"]["scalars"].items():
        per_param.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    return int(state["step"])


def has_checkpoint(directory: Path | None) -> bool:
    return directory is not None and (directory / CHECKPOINT_STATE).is_file()


# ------------------------------------------------------------------------------------- the loop


class _Log:
    """CSV log (+ TensorBoard when installed), written by rank 0 only."""

    def __init__(self, directory: Path | None, enabled: bool, fields: list[str]) -> None:
        self.file = None
        self.tb = None
        if not enabled or directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "train_log.csv"
        new = not path.exists()
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=fields)
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(directory / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def fit(
    network: CLNet,
    heads: Mapping[str, Sequence[int]],
    cases: Sequence[PreparedCase],
    cfg: TrainConfig,
    pad_value: float,
    train_encoder: bool,
    device: torch.device,
    work_dir: Path | None = None,
    resume: bool = True,
    dist_info: DistInfo | None = None,
    teachers: Mapping[str, nn.Module] | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train ``heads`` (decoder name → catalog label of each class, background excluded) in place.

    With ``train_encoder=False`` the encoder is frozen (eval mode, no gradients, not in the
    optimizer). ``teachers`` (decoder name → frozen teacher head) add a distillation term. At the
    end the EMA weights (when enabled) are loaded into the trained modules.
    """
    info = dist_info or DistInfo()
    network.to(device)
    modules = _trainable(network, list(heads), train_encoder)
    if not train_encoder:
        network.encoder.eval()
        network.encoder.requires_grad_(False)
    for m in modules.values():
        m.train()
        m.requires_grad_(True)
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = make_optimizer(params, cfg)
    emas = {n: EMA(m, cfg.ema_decay) for n, m in modules.items()} if cfg.ema_decay > 0 else {}

    all_labels = sorted({lab for labs in heads.values() for lab in labs})
    sampler = PatchSampler(cases, all_labels, cfg.patch_size_zyx, pad_value, cfg.fg_fraction, cfg.augment,
                           seed=cfg.seed, rank=info.rank)
    # Per decoder and scan: catalog label → class lookup, and which classes the scan labels.
    luts, knowns = {}, {}
    for h, labs in heads.items():
        pairs = [c.targets(labs) for c in cases]
        luts[h] = torch.stack([torch.from_numpy(p[0]) for p in pairs]).to(device)
        knowns[h] = torch.stack([torch.from_numpy(p[1]) for p in pairs]).to(device)

    step_module = _Step(network, list(heads), train_encoder, cfg.deep_supervision)
    # Some parameters get no gradient in a step (the coarser levels' 1x1 heads without deep
    # supervision, the coarsest one with it): DDP must be told.
    runner = wrap(step_module, info, device, find_unused=True)
    teachers = dict(teachers or {})
    for t in teachers.values():
        t.to(device).eval().requires_grad_(False)

    start = 0
    ckpt_dir = work_dir / "checkpoint" if work_dir is not None else None
    if resume and has_checkpoint(ckpt_dir):
        start = load_checkpoint(ckpt_dir, modules, emas, optimizer)
    log = _Log(work_dir, info.is_main, ["step", "lr", "loss", *[f"loss_{h}" for h in heads], "seconds"])
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp and not torch.cuda.is_bf16_supported() else None

    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    history: list[dict] = []
    t0 = time.perf_counter()
    loss_value = float("nan")
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, lab, idx = sampler.sample(step, cfg.batch_size)
        x, lab = x.to(device), lab.to(device).long()
        idx_t = torch.tensor(idx, device=device)
        with autocast_context(device) if use_amp else _null():
            outs, skips = runner(x)
        per_head = {}
        total = x.new_zeros((), dtype=torch.float32)
        for h, out in outs.items():
            target = luts[h][idx_t[:, None, None, None], lab]
            known = knowns[h][idx_t]
            loss_h = decoder_loss(out, target, known, dice_weight=cfg.dice_weight, ce_weight=cfg.ce_weight)
            if h in teachers:
                with torch.no_grad():
                    t_out = teachers[h](skips, False)
                s_out = out[0] if isinstance(out, list) else out
                loss_h = loss_h + cfg.kd_weight * distillation_kl(s_out, t_out, cfg.kd_temperature)
            per_head[h] = float(loss_h.detach())
            total = total + loss_h
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        for n, e in emas.items():
            e.update(modules[n])
        loss_value = all_mean(float(total.detach()), info, device)
        if on_step is not None:
            on_step(step, loss_value)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, "lr": lr, "loss": loss_value, **{f"loss_{h}": v for h, v in per_head.items()},
                   "seconds": round(time.perf_counter() - t0, 2)}
            history.append(row)
            log.write(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
        done = step + 1
        if ckpt_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            if info.is_main:
                save_checkpoint(ckpt_dir, done, modules, emas, optimizer, cfg)
            barrier(info)
    if bar is not None:
        bar.close()
    log.close()
    for n, e in emas.items():
        e.copy_to(modules[n])
    for m in modules.values():
        m.eval()
    return FitResult(steps=cfg.steps, final_loss=loss_value, seconds=time.perf_counter() - t0, history=history)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch/numpy; with ``deterministic`` also ask torch for deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
