"""Write label images and JSON outputs atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import OutputError
from .atomic import atomic_write
from .nifti_header import write_nifti
from .seg_nrrd import write_seg_nrrd

__all__ = ["atomic_write", "write_json", "write_label_image", "write_seg_nrrd"]

_LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def write_label_image(labels: sitk.Image, path: Path, xform_codes: tuple[int, int] | None = None) -> None:
    """Write a label map (compressed NIfTI, NRRD or MHA, chosen by extension), keeping its pixel type.

    ``xform_codes``: the ``(qform_code, sform_code)`` a NIfTI output should carry (the input's, see
    :mod:`clnet.io.nifti_header`); ITK's own (1, 1) otherwise, and for other formats it is ignored.
    """
    path = Path(path)
    if not path.name.lower().endswith(_LABEL_SUFFIXES):
        raise OutputError(
            f"Unsupported label image extension for '{path}'.",
            "Use .nii.gz, .nii, .nrrd or .mha (or .seg.nrrd / .dcm for the Slicer / DICOM-SEG outputs).",
        )
    is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))

    if is_nifti:
        atomic_write(path, lambda tmp: write_nifti(labels, tmp, xform_codes))
    else:
        atomic_write(path, lambda tmp: sitk.WriteImage(labels, str(tmp), useCompression=True))


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and paths show up in statistics and run metadata.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as UTF-8 JSON (indent 2) atomically."""
    text = json.dumps(payload, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
