"""Where models live: the bundled demo model, a per-user folder, and explicit paths.

Resolution order for the model to use: an explicit path or name, then ``$CLNET_MODEL``, then the
user's default (``clnet models default NAME``, kept in ``$CLNET_HOME/config.json``), then the
bundled demo model. The per-user folder (``$CLNET_HOME/models``, default ``~/.clnet/models``) is
shared by the CLI and every Slicer version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelError, OutputError
from .manifest import MANIFEST_NAME, Manifest, read_manifest

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_NAME = "demo"


def clnet_home() -> Path:
    """The per-user clnet folder: ``$CLNET_HOME``, default ``~/.clnet``."""
    home = os.environ.get("CLNET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".clnet"


def user_models_dir() -> Path:
    return clnet_home() / "models"


def user_config_path() -> Path:
    return clnet_home() / "config.json"


def read_user_config() -> dict:
    """The user's settings (``{}`` when there are none); a broken file is an error, not silently ignored."""
    path = user_config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read the clnet settings file {path} ({exc}).",
                         "Fix or delete it (it only holds the default model: `clnet models default NAME`).") from None
    if not isinstance(data, dict):
        raise ModelError(f"The clnet settings file {path} does not hold a JSON object.", "Fix or delete it.")
    return data


def write_user_config(data: dict) -> Path:
    """Replace the user's settings atomically."""
    from .io.atomic import atomic_write

    path = user_config_path()
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def default_model_name() -> str | None:
    """The model the user made the default (``clnet models default NAME``), or None."""
    name = read_user_config().get("default_model")
    return name if isinstance(name, str) and name else None


def set_default_model(name: str | None) -> str | None:
    """Make the installed (or bundled) model ``name`` the default; ``None`` clears the setting.

    Returns the name stored. A folder path is refused: the default is a name, so that
    re-installing a model under the same name keeps it the default.
    """
    data = read_user_config()
    if name is None:
        data.pop("default_model", None)
    else:
        installed = {n for n, _, _ in list_models()}
        if name not in installed:
            raise ModelError(f"No installed model is named {name!r}.",
                             f"Installed models: {sorted(installed) or 'none'}; install one with "
                             "`clnet models install PATH` or `clnet models download official`.")
        data["default_model"] = name
    try:
        write_user_config(data)
    except OutputError as exc:
        raise ModelError(f"Cannot save the default model: {exc.message}", exc.hint) from None
    return name


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
    """Turn ``--model`` (a folder, an installed model's name, or nothing) into a model folder.

    Order: ``spec``, then ``$CLNET_MODEL``, then the user's default model, then the bundled demo.
    """
    if spec is None:
        spec = os.environ.get("CLNET_MODEL") or None
    if spec is None and (default := default_model_name()) is not None:
        # A name, never a path: looked up among installed models only, not in the working directory.
        for root in (user_models_dir(), BUNDLED_MODELS_DIR):
            if _is_model_dir(root / default):
                return root / default
        raise ModelError(f"The default model {default!r} (set in {user_config_path()}) is not installed any more.",
                         "Choose another with `clnet models default NAME`, or pass --model.")
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


def check_zip_members(zf: zipfile.ZipFile, archive: Path, dest: Path) -> None:
    """Refuse an archive with a member that would land outside ``dest`` or is a link."""
    root = str(dest.resolve())
    for info in zf.infolist():
        name = info.filename
        target = str((dest / name).resolve())
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        inside = target == root or target.startswith(root.rstrip(os.sep) + os.sep)
        if is_link or name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name or not inside:
            raise ModelError(f"Archive {archive.name} has an unsafe member {name!r}; refusing to unpack it.",
                             "Get the archive from a trusted source.")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a .zip only after checking that no member escapes ``dest`` or is a link."""
    with zipfile.ZipFile(archive) as zf:
        check_zip_members(zf, archive, dest)
        zf.extractall(dest)


def install_model(source: str | os.PathLike, name: str | None = None, overwrite: bool = False,
                  move: bool = False) -> Path:
    """Verify a model folder or .zip (every sha256 and tensor) and put it into the user folder.

    Atomic: the model appears under its name complete or not at all, and a model it replaces stays
    in place until the new one is ready. ``move`` renames a folder in place of copying it (for a
    folder the caller made and no longer needs, on the same file system).
    """
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
        if move and source.is_dir():
            shutil.move(str(model_dir), str(staging))
        else:
            shutil.copytree(model_dir, staging, symlinks=False)
        staging.chmod(0o755)
        if target.exists():
            previous = tmp_path / "previous"  # removed with the temp folder once the new model is in place
            os.replace(target, previous)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(previous, target)
                raise
        else:
            os.replace(staging, target)
    return target
