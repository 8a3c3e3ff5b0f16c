"""Training pairs given directly: (CT image, segmentation, segment) → a binary mask of one anatomy.

The segmentation is either a Slicer ``.seg.nrrd`` (the segment is picked by its name or ID from the
header's ``SegmentN_Name`` / ``SegmentN_ID``; single- and multi-layer files are read through
``SegmentN_Layer`` / ``SegmentN_LabelValue``) or a plain label map (NIfTI, NRRD, …; the segment is an
integer label value). Each pair becomes a :class:`~clnet.training.datasets.CaseSpec` whose label file
is the binary mask (value 1 = the anatomy), so training runs through the usual dataset path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..checkpoint import sha256_file
from ..errors import ClnetError
from .datasets import CaseSpec


@dataclass(frozen=True)
class Segment:
    """One segment of a ``.seg.nrrd`` header."""

    index: int
    id: str
    name: str
    layer: int
    label_value: int


def _read_info(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ClnetError(f"Cannot read segmentation {path}: {exc}".splitlines()[0],
                         "Pass a .seg.nrrd or a label map (NIfTI/NRRD).") from None
    return reader


def read_segments(reader: sitk.ImageFileReader) -> list[Segment]:
    """The segments a ``.seg.nrrd`` header lists (empty for a plain label map)."""
    keys = set(reader.GetMetaDataKeys())
    out = []

    def field(i: int, f: str, default: str = "") -> str:
        key = f"Segment{i}_{f}"
        return reader.GetMetaData(key).strip() if key in keys else default

    for i in sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"Segment(\d+)_ID", k))):
        out.append(Segment(i, field(i, "ID"), field(i, "Name") or field(i, "ID"), int(field(i, "Layer") or 0),
                           int(field(i, "LabelValue") or 1)))
    return out


def _pick(segments: Sequence[Segment], wanted: str, path: Path) -> Segment:
    # Exact ID first, then exact name, then the name ignoring case; an ambiguous match is no match.
    for hits in ([s for s in segments if s.id == wanted], [s for s in segments if s.name == wanted],
                 [s for s in segments if s.name.lower() == wanted.strip().lower()]):
        if len(hits) == 1:
            return hits[0]
    present = ", ".join(f"{s.name!r} (ID {s.id})" for s in segments)
    raise ClnetError(f"{path.name} has no segment {wanted!r}; it has: {present}.",
                     "Give the segment's name or ID as shown in Slicer's Segment Editor.")


def segment_mask(seg_path: str | Path, segment: str) -> sitk.Image:
    """The binary (uint8 0/1) mask of ``segment`` in ``seg_path``, on that file's own grid."""
    path = Path(seg_path)
    if not path.is_file():
        raise ClnetError(f"Segmentation {path} does not exist.")
    segments = read_segments(_read_info(path))
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(image)
    if segments:
        seg = _pick(segments, str(segment), path)
        layers = image.GetNumberOfComponentsPerPixel()
        if layers > 1:  # multi-layer .seg.nrrd: one vector component per layer
            if seg.layer >= layers:
                raise ClnetError(f"{path.name}: segment {seg.name!r} is on layer {seg.layer}, the file has {layers}.")
            array = array[..., seg.layer]
        mask = np.asarray(array) == seg.label_value
        what = f"segment {seg.name!r}"
    else:
        if not str(segment).strip().lstrip("-").isdigit():
            raise ClnetError(f"{path.name} is a label map without segment names; {segment!r} is not a label value.",
                             "For a label map give the integer label value of the anatomy, e.g. 3.")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ClnetError(f"{path.name} has several components per voxel and no segment metadata.")
        mask = np.asarray(array) == int(segment)
        what = f"label value {segment}"
    if not mask.any():
        raise ClnetError(f"{what} of {path.name} is empty: there is nothing to learn from.",
                         "Paint the anatomy first, or pick another segment.")
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    return out


def pair_cases(pairs: Sequence[Sequence[str]], anatomy: str, work_dir: str | Path) -> tuple[list[CaseSpec], list[dict]]:
    """Cases (binary mask files written under ``work_dir``) and the manifest record of the pairs.

    The record lists file names and sha256 only: never paths, never voxels.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cases, record = [], []
    for i, pair in enumerate(pairs):
        if len(pair) != 3:
            raise ClnetError(f"--pair needs IMAGE SEGMENTATION SEGMENT, got {list(pair)}.")
        image, seg, segment = Path(pair[0]), Path(pair[1]), str(pair[2])
        if not image.is_file():
            raise ClnetError(f"Image {image} does not exist.")
        mask = segment_mask(seg, segment)
        mask_file = work / f"pair{i:03d}-mask.nrrd"
        sitk.WriteImage(mask, str(mask_file), True)
        cases.append(CaseSpec(f"pair{i:03d}", image.resolve(), mask_file, {1: anatomy}))
        record.append({"image": image.name, "image_sha256": sha256_file(image), "segmentation": seg.name,
                       "segmentation_sha256": sha256_file(seg), "segment": segment})
    if not cases:
        raise ClnetError("No training pairs were given.")
    return cases, record
