"""Reading official CL-Net checkpoints without executing anything they contain.

Checkpoints are nnU-Net-v1 ``*.model`` files written with ``torch.save``. We read them only with
``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which builds tensors,
containers and numbers but refuses to import or call anything else. On top of the PyTorch
default we allow the handful of NumPy *value* constructors (scalars, dtypes, plain arrays) that
nnU-Net-style training logs put next to the weights; none of them can run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

DDP_PREFIX = "module."


def _numpy_value_globals() -> list[Any]:
    """NumPy reconstructors for numbers and arrays, under both the NumPy 1 and NumPy 2 module paths."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:
        from numpy._core import multiarray as ma  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    allowed: list[Any] = [np.dtype, np.ndarray]
    for fn in (ma.scalar, ma._reconstruct):
        allowed += [fn, (fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    dtypes = getattr(np, "dtypes", None)  # the per-dtype classes that NumPy 2 pickles reference
    if dtypes is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
                     "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def load_checkpoint_safely(path: str | Path) -> dict[str, Any]:
    """Load an official checkpoint with ``weights_only=True``; refuse anything that needs real unpickling.

    Raises :class:`ModelError` naming the disallowed globals when the file would need arbitrary
    code to load (a full pickled object, or a tampered file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} does not exist.", "Check the official results folder.")
    try:
        with torch.serialization.safe_globals(_numpy_value_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        detail = f" It references {unsafe[:6]}." if unsafe else ""
        raise ModelError(
            f"Refusing to load {path}: it needs arbitrary unpickling, which could run code.{detail}",
            "Only plain tensor checkpoints are imported. If you trust the file, convert it in an isolated "
            "environment to a dict of tensors (see docs/official.md) and import that.",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelError(f"Cannot read checkpoint {path} ({type(exc).__name__}: {exc}).",
                         "The file is damaged, incomplete or not a PyTorch checkpoint; download it again.") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"Checkpoint {path} holds a {type(obj).__name__}, not a dict.",
                         "Expected an nnU-Net-v1 style checkpoint with a 'state_dict'.")
    return obj


def _unsafe_globals(path: Path) -> list[str]:
    """The globals PyTorch would refuse (a static scan; nothing is executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - diagnostics only; legacy/raw pickles are not scannable
        return []


def state_dict_of(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``checkpoint['state_dict']`` (or of a bare state dict), DDP prefix removed."""
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, dict):
        raise ModelError(f"Checkpoint {path} has no usable 'state_dict'.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue  # e.g. training bookkeeping next to the weights in a bare dict
        if key.startswith(DDP_PREFIX):
            key = key[len(DDP_PREFIX):]
        out[key] = value
    if not out:
        raise ModelError(f"Checkpoint {path} contains no tensors.")
    return out


@dataclass
class OfficialState:
    """One checkpoint's tensors split by owner, each without its prefix."""

    encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    decoders: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)  # ignored groups → tensor count

    def heads(self) -> list[str]:
        return sorted(set(self.decoders) | set(self.ema))


def split_state(sd: dict[str, torch.Tensor]) -> OfficialState:
    """Group official tensor names: ``encoder.*``, ``decoder_dict.<HEAD>.*``, ``ema_dict.<HEAD>.*``.

    The legacy ``decoder_dict.other`` head, supporting modules and the EMA encoder are never used
    at official inference time; they are only counted.
    """
    st = OfficialState()
    for key, value in sd.items():
        if key.startswith("encoder."):
            st.encoder[key[len("encoder."):]] = value
            continue
        group, _, rest = key.partition(".")
        head, _, name = rest.partition(".")
        if group == "decoder_dict" and head != "other" and name:
            st.decoders.setdefault(head, {})[name] = value
        elif group == "ema_dict" and head != "general_encoder" and name:
            st.ema.setdefault(head, {})[name] = value
        else:
            label = f"{group}.{head}" if group in ("decoder_dict", "ema_dict", "supporting_dict") else group
            st.other[label] = st.other.get(label, 0) + 1
    return st


@dataclass
class PruningInfo:
    """What folding the pruning masks found in one decoder."""

    pruned_tensors: int = 0
    masked_weights: int = 0
    zero_weights: int = 0

    @property
    def sparsity(self) -> float:
        return self.zero_weights / self.masked_weights if self.masked_weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"pruned_tensors": self.pruned_tensors, "masked_weights": self.masked_weights,
                "pruned_weights": self.zero_weights, "sparsity": round(self.sparsity, 6)}


def fold_pruning(
    tensors: dict[str, torch.Tensor], fallback_masks: dict[str, torch.Tensor] | None = None, what: str = "decoder"
) -> tuple[dict[str, torch.Tensor], PruningInfo]:
    """Replace each ``X.weight_orig`` (+ ``X.weight_mask``) by ``X.weight = orig * mask``.

    ``fallback_masks`` (keyed ``X.weight_mask``) supplies a mask when ``tensors`` has the
    re-parametrised weight without its own mask (an EMA copy saved without buffers). Sparsity
    counts the zeros of the masks that were applied.
    """
    fallback_masks = fallback_masks or {}
    out: dict[str, torch.Tensor] = {}
    info = PruningInfo()
    for key, value in tensors.items():
        if key.endswith(".weight_mask"):
            base = key[: -len("_mask")]
            if base + "_orig" not in tensors:
                raise ModelError(f"The official {what} has a pruning mask {key} without its weight {base}_orig.")
            continue
        if key.endswith(".weight_orig"):
            base = key[: -len("_orig")]
            if base in tensors:
                raise ModelError(f"The official {what} has both {base} and {key}; cannot tell which is the weight.")
            mask = tensors.get(base + "_mask", fallback_masks.get(base + "_mask"))
            weight = value.to(torch.float32)
            if mask is not None:
                if mask.shape != value.shape:
                    raise ModelError(f"Pruning mask of {key} has shape {tuple(mask.shape)}, weight {tuple(value.shape)}.")
                mask = mask.to(torch.float32)
                weight = weight * mask
                info.pruned_tensors += 1
                info.masked_weights += mask.numel()
                info.zero_weights += int((mask == 0).sum())
            out[base] = weight
            continue
        out[key] = value.to(torch.float32) if value.is_floating_point() else value
    return out, info


def ema_is_degenerate(ema: dict[str, torch.Tensor]) -> bool:
    """The official fallback rule: an EMA copy is unusable when one of its conv weights rounds to all zeros.

    Like the official loader, only ``….conv.weight`` / ``….conv.weight_orig`` tensors are checked
    (not transposed convs or segmentation outputs), rounded to two decimals.
    """
    for key, value in ema.items():
        parts = key.split(".")
        if len(parts) < 2 or "conv" not in parts[-2] or "weight" not in parts[-1] or "mask" in parts[-1]:
            continue
        if bool(torch.all(torch.round(value.to(torch.float32) * 100) == 0)):
            return True
    return False


def select_head_weights(
    head: str, raw: dict[str, torch.Tensor] | None, ema: dict[str, torch.Tensor] | None, use_ema: bool = True
) -> tuple[dict[str, torch.Tensor], PruningInfo, str]:
    """Pick EMA or raw weights for ``head`` as official inference does, with pruning folded in.

    Returns (plain tensors, pruning info, a short note on which copy was used and why).
    """
    raw_masks = {k: v for k, v in (raw or {}).items() if k.endswith(".weight_mask")}
    if use_ema and ema:
        if raw and _weight_names(ema) != _weight_names(raw):
            only_ema = sorted(_weight_names(ema) - _weight_names(raw))
            only_raw = sorted(_weight_names(raw) - _weight_names(ema))
            raise ModelError(
                f"The EMA copy of decoder {head} does not hold the same tensors as the decoder: "
                f"only in ema_dict {only_ema}; only in decoder_dict {only_raw}.",
                "The checkpoint is inconsistent; re-download it.",
            )
        if ema_is_degenerate(ema):
            note = "decoder_dict (EMA copy has an all-zero conv weight; official fallback)"
        else:
            folded, info = fold_pruning(ema, raw_masks, f"EMA decoder {head}")
            return folded, info, "ema_dict"
    elif not use_ema:
        note = "decoder_dict (EMA disabled)"
    else:
        note = "decoder_dict (no EMA copy in the checkpoint)"
    if not raw:
        raise ModelError(f"The checkpoint has no usable weights for decoder {head} ({note}).")
    folded, info = fold_pruning(raw, None, f"decoder {head}")
    return folded, info, note


def _weight_names(tensors: dict[str, torch.Tensor]) -> set[str]:
    """Tensor names with pruning re-parametrisation undone (``X.weight_orig`` → ``X.weight``)."""
    names = set()
    for k in tensors:
        if k.endswith(".weight_mask"):
            continue
        names.add(k[: -len("_orig")] if k.endswith(".weight_orig") else k)
    return names
