"""Write a :class:`SegmentationResult` to an output folder in the formats the user asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from .catalog.anatomy import NAME_STYLES, Anatomy
from .errors import ClnetError, Setting
from .io import (
    LoadedImage,
    anatomy_statistics,
    check_output_folder,
    statistics_json,
    write_json,
    write_label_image,
    write_preview_png,
    write_seg_nrrd,
    write_statistics_csv,
    write_statistics_json,
)

if TYPE_CHECKING:
    from .inference.segmenter import SegmentationResult

FORMATS = ("nifti", "seg.nrrd", "masks", "dicom-seg")
_FORMATS_OPTION = Setting("--formats", "formats")
_NAMES_OPTION = Setting("--names", "names")


def check_output_request(out_dir: str | Path, source: LoadedImage | sitk.Image, formats: Sequence[str],
                         names: str = "catalog") -> None:
    """Everything about the requested outputs that can be checked before any work or any write."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ClnetError(f"Unknown output format(s) {unknown}.", f"Choose from {', '.join(FORMATS)}.")
    if names not in NAME_STYLES:
        raise ClnetError(f"Unknown naming style {names!r} for {{names}}.", f"Choose {' or '.join(NAME_STYLES)}.",
                         settings={"names": _NAMES_OPTION})
    if "dicom-seg" in formats and (not isinstance(source, LoadedImage) or not source.dicom_files):
        raise ClnetError("DICOM-SEG output needs a DICOM series as input.",
                         "Drop dicom-seg from {formats}, or give the DICOM folder as input.",
                         settings={"formats": _FORMATS_OPTION})
    check_output_folder(Path(out_dir))


def _check_file_names(anatomies: Sequence[Anatomy], names: str) -> None:
    """Two anatomies must not share a mask file (or a statistics.json key), whatever the letter case."""
    seen: dict[str, Anatomy] = {}
    for a in anatomies:
        other = seen.setdefault(a.name_in(names).lower(), a)
        if other is not a:
            raise ClnetError(f"{other.name!r} and {a.name!r} would both write masks/{a.name_in(names)}.nii.gz.",
                             "Rename one of the model's user anatomies, or leave one out of the request.")


def save_result(
    result: SegmentationResult,
    out_dir: str | Path,
    source: LoadedImage | sitk.Image,
    formats: Sequence[str] = ("nifti",),
    stats: bool = False,
    preview: bool = False,
    names: str = "catalog",
) -> dict[str, Path]:
    """Write the chosen outputs (each one atomically) and return their paths.

    ``segmentation.json`` (labels, model, settings, warnings) is always written, last.
    ``masks`` writes one file per requested anatomy, an empty mask when it was not found (as
    TotalSegmentator does), so a script finds every file it asked for. ``names`` picks the mask file
    names and the keys of ``statistics.json``: ``catalog`` (``Kidney_L``) or ``totalsegmentator``
    (``kidney_left``); a user anatomy's name is made file-safe (``Painted spine`` → ``Painted_spine``).
    NIfTI outputs keep a NIfTI input's qform/sform codes. Warnings that writing
    raises (e.g. invented DICOM references) are added to ``result.warnings``.
    """
    check_output_request(out_dir, source, formats, names)
    if "masks" in formats or stats:
        _check_file_names(result.requested, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = source.image if isinstance(source, LoadedImage) else source
    codes = source.nifti_xform_codes if isinstance(source, LoadedImage) else None
    written: dict[str, Path] = {}
    if "nifti" in formats:
        written["nifti"] = out / "segmentation.nii.gz"
        write_label_image(result.labels, written["nifti"], xform_codes=codes)
    if "seg.nrrd" in formats:
        written["seg.nrrd"] = out / "segmentation.seg.nrrd"
        write_seg_nrrd(result.labels, result.present, written["seg.nrrd"])
    if "masks" in formats:
        masks = out / "masks"
        masks.mkdir(exist_ok=True)
        for a in result.requested:
            mask = sitk.Cast(result.labels == a.label, sitk.sitkUInt8)
            write_label_image(mask, masks / f"{a.name_in(names)}.nii.gz", xform_codes=codes)
        written["masks"] = masks
    if "dicom-seg" in formats:
        from .io import write_dicom_seg

        written["dicom-seg"] = out / "segmentation.dcm"
        result.warnings.extend(write_dicom_seg(result.labels, source.dicom_files, result.present,
                                               written["dicom-seg"]))
    if result.decoder_labels:
        heads_dir = out / "decoders"
        heads_dir.mkdir(exist_ok=True)
        for head, img in result.decoder_labels.items():
            write_label_image(img, heads_dir / f"{head}.nii.gz", xform_codes=codes)
        written["decoders"] = heads_dir
    if stats:
        rows = anatomy_statistics(
            sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(image), image.GetSpacing(),
            result.present,
        )
        written["stats"] = out / "statistics.csv"
        write_statistics_csv(written["stats"], rows)
        written["stats_json"] = out / "statistics.json"
        write_statistics_json(written["stats_json"],
                              statistics_json(rows, result.requested, key=lambda a: a.name_in(names)))
    if preview:
        written["preview"] = out / "preview.png"
        write_preview_png(image, result.labels, result.present, written["preview"])
    written["json"] = out / "segmentation.json"
    payload = result.label_map()
    payload["outputs"] = {k: v.name for k, v in written.items() if k != "json"}
    if "masks" in formats:  # where each anatomy's mask is (a user anatomy's file name is not its name)
        for a in result.requested:
            payload["labels"][str(a.label)]["mask"] = f"masks/{a.name_in(names)}.nii.gz"
    payload["names"] = names
    write_json(written["json"], payload)
    return written
