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


PRECISIONS = ("auto", "float32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX) that oneDNN uses."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def select_precision(spec: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network (None: plain float32).

    ``auto``: bf16 on a CUDA GPU (fp16 where it has no bf16), float32 on the CPU, where results then
    equal the plain forward's. ``bf16`` also on the CPU: about 1.5× faster where the CPU has native
    bf16 (AVX512-BF16 or AMX), at the cost of slightly different labels at edges (README,
    Performance). ``float32``: no autocast anywhere."""
    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise ClnetError(f"Unknown precision {spec!r}.", f"Use one of: {', '.join(PRECISIONS)}.")
    if spec == "float32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if spec == "bf16":
            raise ClnetError(f"{torch.cuda.get_device_name(device)} has no bf16 support.",
                             "Use --precision auto (fp16) or float32.")
        return torch.float16
    if spec == "auto":
        return None
    if not cpu_has_bf16():
        raise ClnetError("This CPU has no native bf16 arithmetic (AVX512-BF16 or AMX), so bf16 would be slower.",
                         "Use --precision auto or float32.")
    return torch.bfloat16
