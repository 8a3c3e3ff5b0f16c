"""``clnet add-decoder`` as a job: where the new version goes, how it is named, staged and installed.

The new model folder is always written into a hidden staging folder first and appears under its
final name only once it is complete and verified (encoder and old decoders byte-identical, old
heads' outputs identical): ``-o DIR`` by one rename beside ``DIR``, ``--install NAME`` through
:func:`clnet.registry.install_model` into the user model folder. A run that is cancelled or killed
therefore never leaves a partial model where a reader would find it; the base model is only read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import scratch
from ..errors import ClnetError, ModelError
from ..manifest import Manifest

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,79}")


def slug(text: str) -> str:
    """``My spleen (v2)`` → ``my_spleen_v2``: a decoder-name-safe form of an anatomy name."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s or "decoder"


def default_decoder_name(anatomy: str, existing: Sequence[str]) -> str:
    """A slug of the anatomy, with a counter when the model already has a decoder of that name."""
    base = slug(anatomy)
    if base not in existing:
        return base
    n = 2
    while f"{base}_{n}" in existing:
        n += 1
    return f"{base}_{n}"


def check_install_name(name: str, base: Manifest, base_dir: Path, overwrite: bool) -> None:
    """Refuse a new version name that is not a plain name, is the base model itself, or is taken."""
    from ..registry import list_models, user_models_dir

    if not _MODEL_NAME.fullmatch(name):
        raise ClnetError(f"--install {name!r} is not a usable model name.",
                         "Use letters, digits, '.', '_', '+' and '-' (no spaces or slashes), e.g. demo-spleen-v2.")
    if name == base.name or (user_models_dir() / name).resolve() == base_dir.resolve():
        raise ClnetError(f"--install {name!r} would replace the model being extended.",
                         "Give the new version its own name: the old one stays installed for roll-back.")
    for other, path, _ in list_models():
        if other != name:
            continue
        if path.parent.resolve() != user_models_dir().resolve():
            raise ClnetError(f"{name!r} is the name of a model that ships with clnet.", "Choose another name.")
        if not overwrite:
            raise ClnetError(f"A model named {name!r} is already installed ({path}).",
                             "Choose another --install name, or pass --overwrite to replace it.")


@dataclass
class Staging:
    """A hidden folder beside the destination that holds the model (and, for --install, the work files)."""

    root: Path
    model: Path

    @classmethod
    def beside(cls, parent: Path, label: str) -> Staging:
        parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f".learn-{label}-", dir=parent))
        scratch.remove_on_abort(root)  # a cancelled worker removes it too (clnet.worker)
        return cls(root, root / "model")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        scratch.forget(self.root)


def remove_stale_staging(parent: Path, older_than: float = 24 * 3600) -> None:
    """Remove staging folders a killed run left behind (a day old: no run takes that long here)."""
    now = time.time()
    for d in parent.glob(".learn-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and now - d.stat().st_mtime > older_than:
                shutil.rmtree(d, ignore_errors=True)


def publish(staging: Staging, output: Path | None, install: str | None, overwrite: bool,
            set_default: bool) -> Path:
    """Move the verified staged model to ``output`` or install it as ``install``; returns its folder."""
    from ..registry import install_model, set_default_model

    if install is not None:
        target = install_model(staging.model, name=install, overwrite=overwrite, move=True)
        if set_default:
            set_default_model(install)
        return target
    assert output is not None
    if output.exists():
        if not overwrite:
            raise ClnetError(f"{output} already exists.", "Choose another -o folder or pass --overwrite.")
        old = staging.root / "previous"
        os.replace(output, old)  # removed with the staging folder once the new model is in place
        try:
            os.replace(staging.model, output)
        except BaseException:
            os.replace(old, output)
            raise
    else:
        os.replace(staging.model, output)
    return output


def anatomies_of(manifest: Manifest, decoder: str) -> list[dict]:
    """The result event's ``anatomies``: name, label, whether it is new to the model, what it replaces."""
    from ..catalog.user import catalog_for

    catalog = catalog_for(manifest)
    entry = manifest.decoders[decoder]
    return [{"name": catalog.by_name(a).name, "label": catalog.by_name(a).label,
             "new": a not in entry.replaces, "replaces": entry.replaces.get(a)}
            for a in entry.anatomies]


def result_fields(manifest: Manifest, decoder: str, model_dir: Path, installed: str | None,
                  seconds: float) -> dict:
    """Everything the final ``result`` event says (see docs/training.md)."""
    entry = manifest.decoders[decoder]
    train = manifest.metrics.get("dice_model_grid_training_scans", {}).get(decoder, {}).get("mean")
    validation = entry.info.get("validation") or {}
    return {
        "model": installed,
        "model_dir": str(model_dir),
        "decoder": decoder,
        "anatomies": anatomies_of(manifest, decoder),
        "validation_dice": validation.get("dice"),
        "training_dice": train if train == train else None,  # NaN (no labelled scan) → null
        "seconds": round(seconds, 1),
        "base_model": (manifest.base_model or {}).get("name"),
        "version": manifest.version,
    }


ProgressFn = Callable[..., None]


def check_output_choice(output: str | None, install: str | None, set_default: bool) -> None:
    if (output is None) == (install is None):
        raise ClnetError("Say where the new model goes: -o DIR or --install NAME (exactly one).",
                         "--install NAME puts a new version into your model folder; -o DIR writes a folder.")
    if set_default and install is None:
        raise ClnetError("--set-default needs --install NAME.", "Or run `clnet models default NAME` afterwards.")


def check_not_base(output: Path, base_dir: Path) -> None:
    if output.resolve() == base_dir.resolve():
        raise ModelError("-o must differ from --model: the old model stays as it is.")
