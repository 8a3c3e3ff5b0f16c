"""Import the release's ``public_bpr_model/`` (bpreg) into a clnet body-part network, without unpickling.

The folder holds ``model.pt`` (a PyTorch state dict of bpreg's ``BodyPartRegression``: ``model.<i>.*`` =
VGG16 features, ``conv6.*``, ``fc7.*``), ``config.json`` (training settings; ``base_model`` names the
architecture) and ``inference-settings.json`` (landmark look-up table and slope statistics).
``model.pt`` is read with ``torch.load(weights_only=True)`` only; every tensor is renamed onto
:class:`~clnet.bodypart.bpreg_network.BpregNetwork` and checked name by name and shape by shape.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .bpreg import BpregModel, BpregSettings, check_tensors
from .bpreg_network import KIND, BpregNetwork

FOLDER_NAME = "public_bpr_model"
WEIGHTS_NAME = "model.pt"
CONFIG_NAME = "config.json"
SETTINGS_NAME = "inference-settings.json"
DDP_PREFIX = "module."
_SEARCH_DEPTH = 5

CONVERT_HINT = (
    "clnet never unpickles Python objects. If you trust the file, convert it once in an isolated environment "
    "that has bpreg installed: `m = torch.load('model.pt', weights_only=False); "
    "torch.save(m.state_dict(), 'model.pt')` (a full module) or `torch.save(m['state_dict'], 'model.pt')` "
    "(a training checkpoint), then import again. Or move public_bpr_model/ away: clnet then gates with its "
    "own body-part model."
)


def find_bpr_folder(root: str | os.PathLike | None) -> Path | None:
    """The ``public_bpr_model`` folder (with a ``model.pt``) in or above ``root``, the shallowest one below
    it first (the official layout keeps it directly in ``results/``)."""
    if root is None:
        return None
    root = Path(root).resolve()
    base = len(root.parts)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if len(here.parts) - base >= _SEARCH_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        if here.name == FOLDER_NAME and WEIGHTS_NAME in filenames:
            found.append(here)
    if found:
        return min(found, key=lambda p: (len(p.parts), str(p)))
    for parent in root.parents[:3]:
        if (parent / FOLDER_NAME / WEIGHTS_NAME).is_file():
            return parent / FOLDER_NAME
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``model.pt``'s tensors, loaded with ``weights_only=True``; a pickled module is refused."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            refs = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))[:6]
        except Exception:  # noqa: BLE001 - diagnostics only (legacy files cannot be scanned)
            refs = []
        what = f" (it references {refs})" if refs else ""
        raise ModelError(f"Refusing to load {path}: it is a pickled Python object{what}, not a state dict of "
                         "tensors, and loading it could run code.", CONVERT_HINT) from exc
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelError(f"Cannot read {path} ({type(exc).__name__}: {exc}).",
                         "The file is damaged or not a PyTorch file; download it again.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.", CONVERT_HINT)
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{path} holds a {type(value).__name__} under {key!r}; a state dict holds only tensors.",
                             CONVERT_HINT)
        out[str(key)] = value
    return out


def official_name(ours: str) -> str:
    """bpreg's name for one of our tensors: the VGG stack is ``model.<i>`` there, ``features.<i>`` here."""
    return "model." + ours[len("features."):] if ours.startswith("features.") else ours


def map_state_dict(official: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Rename bpreg's tensors onto :class:`BpregNetwork`, insisting on an exact, shape-exact cover."""
    expected = BpregNetwork().state_dict()
    names = {official_name(k): k for k in expected}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        key = key.removeprefix(DDP_PREFIX)
        renamed[names.get(key, f"{key} (no place in clnet's network)")] = value
    check_tensors(renamed, expected, what)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in renamed.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read {path} ({exc}).", "Download the release's public_bpr_model/ again.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object.", "Download the release's public_bpr_model/ again.")
    return data


def import_bpr(folder: str | os.PathLike) -> tuple[BpregModel, dict[str, Any]]:
    """The release's body-part model as a clnet scorer, plus a provenance record for the manifest."""
    from ..checkpoint import sha256_file

    folder = Path(folder)
    weights, config_path, settings_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME, folder / SETTINGS_NAME
    if not settings_path.is_file():
        raise ModelError(f"{folder} has {WEIGHTS_NAME} but no {SETTINGS_NAME}; without its landmark table the "
                         "scores cannot be put on the 0-100 scale.", "Download the whole public_bpr_model/ folder.")
    if config_path.is_file():
        base_model = _read_json(config_path).get("base_model", "vgg")
        if base_model != "vgg":
            raise ModelError(f"{config_path} names base model {base_model!r}; clnet supports bpreg's VGG16 model.",
                             "Use the release's public bpreg model, or move public_bpr_model/ away.")
    settings = BpregSettings.from_release(_read_json(settings_path), str(settings_path))
    tensors = map_state_dict(read_state_dict(weights), f"{weights}")
    network = BpregNetwork()
    network.load_state_dict(tensors, strict=True)
    files = [p for p in (weights, config_path, settings_path) if p.is_file()]
    info = {
        "source": str(folder.resolve()),
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "kind": KIND,
        "method": "bpreg (Schuhegger et al.), as run by the official CL-Net inference",
    }
    return BpregModel(network.eval(), settings), info
