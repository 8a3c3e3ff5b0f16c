"""Model directories: save and load a CL-Net with its manifest, never unpickling anything.

Every weight file is safetensors; its sha256 is recorded in the manifest and checked on load, and
the tensors must match the architecture the manifest describes exactly (names and shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import ModelError
from .manifest import MANIFEST_NAME, DecoderEntry, Manifest, read_manifest
from .model import CLNet


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A model ready to run: its manifest, the network (eval mode) and where it came from."""

    manifest: Manifest
    network: CLNet
    directory: Path | None = None
    bodypart: Any = None  # the model's own body-part scorer (manifest ``bodypart``), verified; None: none

    @property
    def anatomies(self) -> list[str]:
        return list(self.manifest.anatomy_owner())


def build_network(manifest: Manifest, decoders: Iterable[str] | None = None) -> CLNet:
    names = list(manifest.decoders) if decoders is None else list(decoders)
    return CLNet(manifest.encoder, {n: manifest.decoders[n].config for n in names})


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _read_verified(directory: Path, file: str, expected_sha: str, what: str) -> bytes:
    if not file or Path(file).name != file:
        raise ModelError(f"The manifest names an unsafe file {file!r} for {what}.", "Only plain file names are allowed.")
    path = directory / file
    if not path.is_file():
        raise ModelError(f"Weight file {path} for {what} is missing.", "Re-install the model folder completely.")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if not expected_sha:
        raise ModelError(f"The manifest has no sha256 for {what} ({file}).", "Re-create the model with clnet.")
    if actual != expected_sha:
        raise ModelError(
            f"Weight file {file} ({what}) does not match its sha256 in the manifest "
            f"(expected {expected_sha[:12]}…, found {actual[:12]}…); it was modified or corrupted.",
            "Re-install the model from a trusted copy.",
        )
    return data


def _load_into(module: torch.nn.Module, data: bytes, what: str) -> None:
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"The weights of {what} are not a valid safetensors file ({exc}).", "Re-install the model.") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape
    )
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:8]}{' …' if len(extra) > 8 else ''}")
        if wrong:
            parts.append(f"wrong shape {wrong[:8]}{' …' if len(wrong) > 8 else ''}")
        raise ModelError(
            f"The tensors of {what} do not match the architecture in the manifest: {'; '.join(parts)}.",
            "The manifest and weights belong to different models; re-install the model.",
        )
    module.load_state_dict(tensors, strict=True)


def load_model(
    directory: str | Path, decoders: Iterable[str] | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model folder (only the named decoders, or all), verifying every file's sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    names = list(manifest.decoders) if decoders is None else list(decoders)
    unknown = [n for n in names if n not in manifest.decoders]
    if unknown:
        raise ModelError(f"Model {manifest.name} has no decoder(s) {unknown}.", f"Available: {list(manifest.decoders)}.")
    network = build_network(manifest, names)
    _load_into(network.encoder, _read_verified(directory, manifest.encoder_file, manifest.encoder_sha256, "the encoder"),
               "the encoder")
    for n in names:
        entry = manifest.decoders[n]
        _load_into(network.decoders[n], _read_verified(directory, entry.file, entry.sha256, f"decoder {n}"),
                   f"decoder {n}")
    network.eval().to(device)
    bodypart = None
    if manifest.bodypart is not None:
        from .bodypart import load_scorer

        entry = manifest.bodypart
        what = f"the body-part network ({entry.kind})"
        bodypart = load_scorer(entry.kind, _read_verified(directory, entry.file, entry.sha256, what), entry.settings,
                               what)
    return LoadedModel(manifest=manifest, network=network, directory=directory, bodypart=bodypart)


def verify_model(directory: str | Path) -> Manifest:
    """Check a model folder completely (manifest, every sha256, every tensor name and shape)."""
    return load_model(directory).manifest


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def decoder_file_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return f"decoder_{safe}.safetensors"


def save_model(
    network: CLNet,
    manifest: Manifest,
    directory: str | Path,
    overwrite: bool = False,
    copy_from: str | Path | None = None,
    bodypart: bytes | None = None,
) -> Manifest:
    """Write ``network`` as a model folder described by ``manifest`` (sha256 and file names filled in).

    With ``copy_from``, files whose manifest entry already names a file with a sha256 there are
    copied byte for byte instead of re-serialised: this is how continual learning keeps the encoder
    and old decoders bit-identical. The folder appears atomically (written beside it, then renamed).
    ``bodypart``: the bytes of the body-part network ``manifest.bodypart`` names; without them that
    file is copied from ``copy_from`` (its sha256 must match).
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ModelError(f"{directory} already exists.", "Choose another output folder or remove it first.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        source = Path(copy_from) if copy_from else None
        # The encoder, then each decoder: copied when unchanged, serialised otherwise.
        items: list[tuple[str, torch.nn.Module, str, str]] = [
            ("encoder", network.encoder, manifest.encoder_file or "encoder.safetensors", manifest.encoder_sha256)
        ]
        for name in manifest.decoders:
            entry: DecoderEntry = manifest.decoders[name]
            items.append((name, network.decoders[name], entry.file or decoder_file_name(name), entry.sha256))
        for name, module, file, sha in items:
            if source is not None and sha and (source / file).is_file() and sha256_file(source / file) == sha:
                shutil.copyfile(source / file, tmp / file)
                digest = sha
            else:
                data = save_safetensors_bytes(_module_tensors(module), metadata={"clnet_part": name})
                _write_bytes(tmp / file, data)
                digest = sha256_bytes(data)
            if name == "encoder":
                manifest.encoder_file, manifest.encoder_sha256 = file, digest
            else:
                manifest.decoders[name].file, manifest.decoders[name].sha256 = file, digest
        if manifest.bodypart is not None:
            _write_bodypart(manifest, tmp, source, bodypart)
        _write_bytes(tmp / MANIFEST_NAME, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared and packaged
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_bodypart(manifest: Manifest, tmp: Path, source: Path | None, data: bytes | None) -> None:
    """Put the body-part network file of ``manifest.bodypart`` into the folder being written."""
    entry = manifest.bodypart
    assert entry is not None
    file = entry.file or "bodypart.safetensors"
    if Path(file).name != file:
        raise ModelError(f"The manifest names an unsafe body-part file {file!r}.", "Only plain file names are allowed.")
    if data is not None:
        _write_bytes(tmp / file, data)
        entry.file, entry.sha256 = file, sha256_bytes(data)
    elif source is not None and entry.sha256 and (source / file).is_file() and sha256_file(source / file) == entry.sha256:
        shutil.copyfile(source / file, tmp / file)
    else:
        raise ModelError(f"The manifest names a body-part network ({file}) but its bytes were not given and no "
                         "matching copy was found.", "Pass the model folder it came from as copy_from.")
