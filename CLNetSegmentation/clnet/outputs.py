"""Write a :class:`SegmentationResult` to an output folder in the formats the user asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from .errors import ClnetError
from .inference.segmenter import SegmentationResult
from .io import (
    LoadedImage,
    anatomy_statistics,
    check_output_folder,
    write_json,
    write_label_image,
    write_preview_png,
    write_seg_nrrd,
    write_statistics_csv,
)

FORMATS = ("nifti", "seg.nrrd", "masks", "dicom-seg")


def check_output_request(out_dir: str | Path, source: LoadedImage | sitk.Image, formats: Sequence[str]) -> None:
    """Everything about the requested outputs that can be checked before any work or any write."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ClnetError(f"Unknown output format(s) {unknown}.", f"Choose from {', '.join(FORMATS)}.")
    if "dicom-seg" in formats and (not isinstance(source, LoadedImage) or not source.dicom_files):
        raise ClnetError("DICOM-SEG output needs a DICOM series as input.",
                         "Drop dicom-seg from --formats, or give the DICOM folder as input.")
    check_output_folder(Path(out_dir))


def save_result(
    result: SegmentationResult,
    out_dir: str | Path,
    source: LoadedImage | sitk.Image,
    formats: Sequence[str] = ("nifti",),
    stats: bool = False,
    preview: bool = False,
) -> dict[str, Path]:
    """Write the chosen outputs (each one atomically) and return their paths.

    ``segmentation.json`` (labels, model, settings) is always written.
    """
    check_output_request(out_dir, source, formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = source.image if isinstance(source, LoadedImage) else source
    written: dict[str, Path] = {}
    if "nifti" in formats:
        written["nifti"] = out / "segmentation.nii.gz"
        write_label_image(result.labels, written["nifti"])
    if "seg.nrrd" in formats:
        written["seg.nrrd"] = out / "segmentation.seg.nrrd"
        write_seg_nrrd(result.labels, result.present, written["seg.nrrd"])
    if "masks" in formats:
        masks = out / "masks"
        masks.mkdir(exist_ok=True)
        for a in result.present:
            mask = sitk.Cast(result.labels == a.label, sitk.sitkUInt8)
            write_label_image(mask, masks / f"{a.name}.nii.gz")
        written["masks"] = masks
    if "dicom-seg" in formats:
        from .io import write_dicom_seg

        written["dicom-seg"] = out / "segmentation.dcm"
        write_dicom_seg(result.labels, source.dicom_files, result.present, written["dicom-seg"])
    if result.decoder_labels:
        heads_dir = out / "decoders"
        heads_dir.mkdir(exist_ok=True)
        for head, img in result.decoder_labels.items():
            write_label_image(img, heads_dir / f"{head}.nii.gz")
        written["decoders"] = heads_dir
    if stats:
        rows = anatomy_statistics(
            sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(image), image.GetSpacing(),
            result.present,
        )
        written["stats"] = out / "statistics.csv"
        write_statistics_csv(written["stats"], rows)
    if preview:
        written["preview"] = out / "preview.png"
        write_preview_png(image, result.labels, result.present, written["preview"])
    written["json"] = out / "segmentation.json"
    payload = result.label_map()
    payload["outputs"] = {k: v.name for k, v in written.items() if k != "json"}
    write_json(written["json"], payload)
    return written
