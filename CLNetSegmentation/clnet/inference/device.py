"""Choosing the torch device."""

from __future__ import annotations

import torch

from ..errors import ClnetError


def select_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else CPU; ``cuda`` / ``cuda:N`` / ``cpu``."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "gpu":
        spec = "cuda"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ClnetError(f"Device {spec!r} was requested but this torch ({torch.__version__}) sees no CUDA GPU.",
                             "Use --device cpu, or install a CUDA build of torch.")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ClnetError(f"GPU {dev.index} does not exist (this machine has {torch.cuda.device_count()}).",
                             "Use --device cuda:0.")
        return dev
    raise ClnetError(f"Unknown device {spec!r}.", "Use auto, cpu, cuda or cuda:N.")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA, torch {torch.__version__})"
    return f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"
