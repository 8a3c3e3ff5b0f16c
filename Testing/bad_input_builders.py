"""Building blocks for the bad-input cases: the case record, the ``clnet segment`` command line and
helpers that write damaged copies of the real example data (never modifying the originals)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass
class Ctx:
    tmp: Path
    shared_dir: Path  # ../shared/data: DICOM, MR and the small CT; a case that needs it skips without it
    crop: Path  # 64x56x40 crop of the real CT that ships with clnet, 3 mm
    model: Path

    @property
    def shared(self) -> Path:
        if not (self.shared_dir / "example_ct_dicom").is_dir():
            import pytest

            pytest.skip(f"shared example data not found at {self.shared_dir}")
        return self.shared_dir


@dataclass
class Case:
    """``argv`` runs it; ``watch`` must be byte-identical afterwards; ``out`` must stay clean on error."""

    argv: list[str]
    watch: list[Path]
    out: Path
    ok: bool = False
    phrases: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    expected_size: tuple[int, int, int] | None = None


def segment(ctx: Ctx, source: Path, *extra: str, ok: bool = False, phrases: tuple[str, ...] = (),
            model: Path | None = None, watch: list[Path] | None = None,
            expected_size: tuple[int, int, int] | None = None) -> Case:
    out = ctx.tmp / "out"
    argv = ["segment", str(source), "-o", str(out), "--model", str(model or ctx.model), "-q", *extra]
    return Case(argv, watch if watch is not None else [source], out, ok, phrases, expected_size=expected_size)


def crop_image(ctx: Ctx) -> sitk.Image:
    return sitk.ReadImage(str(ctx.crop))


def write(ctx: Ctx, image: sitk.Image, name: str) -> Path:
    path = ctx.tmp / name
    sitk.WriteImage(image, str(path))
    return path


def with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def edited_nifti(ctx: Ctx, name: str, edits: dict[str, object], gz: bool = True) -> Path:
    """The crop as NIfTI-1 with header fields overwritten byte-wise (no nibabel needed).

    ``edits`` keys: 'dim' (8 shorts), 'pixdim' ({index: value}), 'qform_code', 'sform_code'.
    """
    raw = ctx.tmp / "raw.nii"
    sitk.WriteImage(crop_image(ctx), str(raw))
    data = bytearray(raw.read_bytes())
    raw.unlink()
    if "dim" in edits:
        struct.pack_into("<8h", data, 40, *edits["dim"])
    for index, value in dict(edits.get("pixdim", {})).items():
        struct.pack_into("<f", data, 76 + 4 * index, value)
    if "qform_code" in edits:
        struct.pack_into("<h", data, 252, edits["qform_code"])
    if "sform_code" in edits:
        struct.pack_into("<h", data, 254, edits["sform_code"])
    path = ctx.tmp / (name + (".nii.gz" if gz else ".nii"))
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return path


def rotated(image: sitk.Image, angles_deg: tuple[float, float, float], flip_z: bool = False) -> sitk.Image:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rz @ ry @ rx
    if flip_z:
        m = m @ np.diag([1.0, 1.0, -1.0])
    out = sitk.Image(image)
    out.SetDirection(m.ravel().tolist())
    return out


def dicom_copy(ctx: Ctx, name: str) -> Path:
    folder = ctx.tmp / name
    shutil.copytree(ctx.shared / "example_ct_dicom", folder)
    return folder


def dicom_files_by_position(folder: Path) -> list[Path]:
    import pydicom

    files = sorted(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def two_series(ctx: Ctx) -> Path:
    import pydicom

    folder = ctx.tmp / "two_series"
    folder.mkdir()
    for uid, desc in ((UID_A, "first"), (UID_B, "second")):
        for f in sorted((ctx.shared / "example_ct_dicom").iterdir()):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.SeriesDescription = desc
            ds.save_as(folder / f"{desc}_{f.name}")
    return folder


UID_A = "1.2.826.0.1.3680043.8.498.71"
UID_B = "1.2.826.0.1.3680043.8.498.72"


def model_copy(ctx: Ctx) -> Path:
    target = ctx.tmp / "model"
    shutil.copytree(ctx.model, target)
    return target


def rewrite_decoder(model: Path, change: Callable[[dict], None]) -> None:
    """Rewrite decoder 'spine' with ``change`` applied to its tensors and a *matching* sha256,
    so only the architecture check can catch it."""
    from safetensors.torch import load_file, save_file

    manifest = json.loads((model / "manifest.json").read_text())
    entry = manifest["decoders"]["spine"]
    tensors = load_file(str(model / entry["file"]))
    change(tensors)
    save_file(tensors, str(model / entry["file"]))
    entry["sha256"] = hashlib.sha256((model / entry["file"]).read_bytes()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))


def first_conv_key(model: Path) -> str:
    from safetensors import safe_open

    manifest = json.loads((model / "manifest.json").read_text())
    with safe_open(str(model / manifest["decoders"]["spine"]["file"]), "pt") as f:
        return sorted(k for k in f.keys() if k.endswith("conv.weight"))[0]
