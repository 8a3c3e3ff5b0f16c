"""Where models live: the bundled demo model, a per-user folder, and explicit paths.

Resolution order for the model to use: an explicit path or name, then ``$CLNET_MODEL``, then the
bundled default model. The per-user folder (``$CLNET_HOME/models``, default ``~/.clnet/models``)
is shared by the CLI and every Slicer version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelError
from .manifest import MANIFEST_NAME, Manifest, read_manifest

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_NAME = "demo"


def user_models_dir() -> Path:
    home = os.environ.get("CLNET_HOME")
    return (Path(home) if home else Path.home() / ".clnet") / "models"


def _is_model_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def list_models() -> list[tuple[str, Path, Manifest | None]]:
    """Every model we can find: bundled first, then installed ones (manifest None if unreadable)."""
    found = []
    for root in (BUNDLED_MODELS_DIR, user_models_dir()):
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if _is_model_dir(p)):
            try:
                found.append((d.name, d, read_manifest(d)))
            except ModelError:
                found.append((d.name, d, None))
    return found


def resolve_model(spec: str | os.PathLike | None = None) -> Path:
    """Turn ``--model`` (a folder, an installed model's name, or nothing) into a model folder."""
    if spec is None:
        spec = os.environ.get("CLNET_MODEL") or None
    if spec is None:
        bundled = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
        if _is_model_dir(bundled):
            return bundled
        raise ModelError(
            "No model is installed: this copy of clnet has no bundled default model.",
            "Pass --model DIR (a CLNet model folder), install one with `clnet models install PATH`, "
            "or set CLNET_MODEL.",
        )
    path = Path(spec).expanduser()
    if path.exists():
        if not _is_model_dir(path):
            raise ModelError(f"{path} is not a CLNet model folder (no {MANIFEST_NAME}).",
                             "Point --model to a folder that holds manifest.json and *.safetensors files.")
        return path
    for root in (user_models_dir(), BUNDLED_MODELS_DIR):
        if _is_model_dir(root / str(spec)):
            return root / str(spec)
    names = [n for n, _, _ in list_models()]
    raise ModelError(f"Model {spec!r} not found (neither a folder nor an installed model).",
                     f"Installed models: {names or 'none'}; see `clnet models list`.")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a .zip only after checking that no member escapes ``dest`` or is a link."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            target = (dest / name).resolve()
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if is_link or name.startswith("/") or ".." in Path(name).parts or not str(target).startswith(str(dest.resolve())):
                raise ModelError(f"Model archive {archive.name} has an unsafe member {name!r}; refusing to unpack it.",
                                 "Get the model from a trusted source.")
        zf.extractall(dest)


def install_model(source: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Verify a model folder or .zip (every sha256 and tensor) and copy it into the user folder."""
    source = Path(source).expanduser()
    if not source.exists():
        raise ModelError(f"{source} does not exist.", "Give the path of a model folder or a .zip of one.")
    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".install-") as tmp:
        tmp_path = Path(tmp)
        if source.is_dir():
            model_dir = source
        elif zipfile.is_zipfile(source):
            _safe_extract(source, tmp_path / "unpacked")
            candidates = [p.parent for p in (tmp_path / "unpacked").rglob(MANIFEST_NAME)]
            if len(candidates) != 1:
                raise ModelError(f"{source.name} must hold exactly one model folder, found {len(candidates)}.")
            model_dir = candidates[0]
        else:
            raise ModelError(f"{source} is neither a model folder nor a .zip archive.")
        from .checkpoint import verify_model  # torch is needed only to verify the tensors

        manifest = verify_model(model_dir)
        target = root / (name or manifest.name)
        if target.exists() and not overwrite:
            raise ModelError(f"A model named {target.name!r} is already installed at {target}.",
                             "Pass --name to install under another name, or --overwrite.")
        staging = tmp_path / "staging"
        shutil.copytree(model_dir, staging, symlinks=False)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target
