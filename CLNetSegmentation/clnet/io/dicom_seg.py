"""DICOM Segmentation objects (highdicom) referencing the source CT series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog.anatomy import Anatomy
from ..catalog.terminology import (
    PRIVATE_SCHEME,
    USER_PRIVATE_SCHEME,
    Code,
    private_schemes,
    slicer_terminology,
)
from ..errors import ClnetError, InputError
from .atomic import atomic_write

# Coding Scheme Identification (0008,0110) items for the private schemes a SEG may use.
_PRIVATE_SCHEME_NAMES = {
    PRIVATE_SCHEME: "CLNet anatomies without a SNOMED-CT code",
    USER_PRIVATE_SCHEME: "CLNet user-defined anatomies of one model",
}
_MANUFACTURER = "CLNet"
# Content Creator's Name (0070,0084) is a person name; for an automatic result it names the software.
_CONTENT_CREATOR = "CLNet^automatic"


def _import_highdicom():
    try:
        import highdicom as hd
        import pydicom
    except ImportError:
        raise ClnetError(
            "DICOM-SEG output needs the optional packages highdicom and pydicom.",
            "Install them with `pip install clnet-segmentation[dicomseg]`.",
        ) from None
    return hd, pydicom


def _version() -> str:
    try:
        from .. import __version__
    except ImportError:
        return "0"
    return str(__version__)


def _coded(hd, code: Code):
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _scheme_item(pydicom, scheme: str):
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = scheme
    item.CodingSchemeName = _PRIVATE_SCHEME_NAMES.get(scheme, scheme)
    item.CodingSchemeResponsibleOrganization = "CLNet Segmentation"
    return item


def _load_sources(pydicom, dicom_files: Sequence[Path]) -> tuple[list, list[str]]:
    """Read source headers; fill UIDs that anonymisers blank out (in memory only, files untouched).

    Returns the datasets and one warning per kind of UID that had to be invented: a SEG that
    references invented UIDs cannot be linked to its CT by a PACS, and the user must know that.
    """
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in dicom_files]
    first = datasets[0]
    anchor = [str(first.get("FrameOfReferenceUID", "")), str(dicom_files[0].parent)]
    # Deterministic fillers so that every slice (and a rerun) agrees on the same study/series.
    study = first.get("StudyInstanceUID") or pydicom.uid.generate_uid(entropy_srcs=["study", *anchor])
    series = first.get("SeriesInstanceUID") or pydicom.uid.generate_uid(entropy_srcs=["series", *anchor])
    invented: dict[str, int] = {}
    for ds, path in zip(datasets, dicom_files):
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not ds.get("SOPInstanceUID"):
            uid = meta.get("MediaStorageSOPInstanceUID") if meta is not None else None
            if not uid:
                invented["SOPInstanceUID"] = invented.get("SOPInstanceUID", 0) + 1
            ds.SOPInstanceUID = uid or pydicom.uid.generate_uid(entropy_srcs=["sop", str(path)])
        for keyword, filler in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
            if not ds.get(keyword):
                invented[keyword] = invented.get(keyword, 0) + 1
                setattr(ds, keyword, filler)
    warnings = [
        f"The DICOM series lacks {keyword} in {count} of {len(datasets)} files; the DICOM-SEG references an "
        "invented one, so a PACS cannot link it to its CT."
        for keyword, count in invented.items()
    ]
    return datasets, warnings


def write_dicom_seg(
    labels: sitk.Image, dicom_files: Sequence[Path], anatomies: Sequence[Anatomy], path: Path
) -> list[str]:
    """Write a BINARY DICOM-SEG with one segment per anatomy present in ``labels``; return warnings.

    ``labels`` must be on the grid of the series: slice ``k`` of the image is ``dicom_files[k]``
    (the order :func:`clnet.io.read_image` returns). The warnings say which referenced UIDs had to
    be invented because the source files lack them.
    """
    hd, pydicom = _import_highdicom()
    size = labels.GetSize()
    if len(dicom_files) != size[2]:
        raise InputError(
            f"The label image has {size[2]} slices but the DICOM series has {len(dicom_files)} files.",
            "DICOM-SEG needs labels on the grid of the DICOM series they were computed from.",
        )
    array = sitk.GetArrayFromImage(labels)
    counts = np.bincount(array.ravel(), minlength=1) if array.size else np.zeros(1, int)
    present = [
        a for a in sorted(anatomies, key=lambda a: a.label) if a.label < len(counts) and counts[a.label]
    ]
    if not present:
        raise InputError(
            "The segmentation contains none of the requested anatomies; a DICOM-SEG needs at least one segment.",
            "Check the selected structures or write another output format.",
        )
    # DICOM segment numbers must run 1..n, so labels (catalog 1-235, user 1000+, gaps anywhere) are remapped.
    lut = np.zeros(len(counts), dtype=np.uint16 if len(present) > 255 else np.uint8)
    for number, anatomy in enumerate(present, start=1):
        lut[anatomy.label] = number
    pixels = lut[array]

    algorithm = hd.AlgorithmIdentificationSequence(
        name="CLNet",
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        version=_version(),
    )
    descriptions = []
    for number, anatomy in enumerate(present, start=1):
        term = slicer_terminology(anatomy)  # the same codes as the seg.nrrd, private ones included
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=anatomy.display_name[:64],
            segmented_property_category=_coded(hd, term.category),
            segmented_property_type=_coded(hd, term.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=anatomy.name,
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*anatomy.color),
        )
        if term.modifier:
            # The modifier (e.g. laterality) lives inside the property type item.
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(hd, term.modifier)
            ]
        descriptions.append(description)

    sources, warnings = _load_sources(pydicom, dicom_files)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name="CLNet segmentation",
        software_versions=_version(),
        device_serial_number="0",
        series_description="CLNet segmentation",
        content_creator_name=_CONTENT_CREATOR,
    )
    schemes = private_schemes(slicer_terminology(a) for a in present)
    if schemes:
        # Say what the private schemes are (SOP Common: Coding Scheme Identification Sequence).
        seg.CodingSchemeIdentificationSequence = [_scheme_item(pydicom, s) for s in schemes]
    atomic_write(Path(path), lambda tmp: seg.save_as(str(tmp)))
    return warnings
