"""Find, choose and check one DICOM series in a folder (GDCM via SimpleITK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, Setting

SERIES = Setting("--series UID", 'series_uid="UID"')

_TAG_SERIES_UID = "0020|000e"
_TAG_DESCRIPTION = "0008|103e"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"

# Relative spread of slice gaps we accept; real scanners jitter by far less than this,
# while one missing slice doubles a gap.
_GAP_TOLERANCE = 0.05


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def is_dicom_file(path: Path) -> bool:
    """True if the file carries the DICOM Part 10 preamble magic."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def series_uid_of_file(path: Path) -> str:
    """SeriesInstanceUID of one DICOM file ('' when the tag is empty)."""
    try:
        return _tag(_header(path), _TAG_SERIES_UID) or ""
    except RuntimeError:
        raise InputError(
            f"'{path}' looks like DICOM but cannot be read.",
            "Point to the folder of the series instead, or re-export it.",
        ) from None


def _describe(folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = ""
    if files:
        try:
            description = _tag(_header(Path(files[0])), _TAG_DESCRIPTION) or ""
        except RuntimeError:
            pass
    shown = uid or "<empty UID>"
    return f"{shown} '{description}' ({len(files)} slices)"


def select_series(folder: Path, series_uid: str | None) -> tuple[str, list[Path]]:
    """Return (uid, sorted files) of the one series to read, or raise a helpful InputError."""
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(
            f"Folder '{folder}' contains no DICOM files; point to the folder of one CT series "
            "or to a NIfTI/NRRD file.",
            "Subfolders are not searched.",
        )
    if series_uid is None:
        if len(uids) > 1:
            listing = "; ".join(_describe(folder, uid) for uid in uids)
            raise InputError(
                f"Folder '{folder}' contains {len(uids)} DICOM series: {listing}.",
                "Choose one: pass {series}.", settings={"series": SERIES},
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        listing = "; ".join(_describe(folder, uid) for uid in uids)
        raise InputError(
            f"Series '{series_uid}' is not in folder '{folder}'; it holds: {listing}.",
            "Pass one of the listed UIDs as {series}.", settings={"series": SERIES},
        )
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)]
    return series_uid, files


def check_slice_spacing(files: list[Path]) -> None:
    """Raise InputError if slice positions along the normal are duplicated, missing or uneven.

    GDCM only warns on this and returns a volume with wrong geometry, so we check first.
    """
    if len(files) < 3:
        return
    positions = []
    normal = None
    for path in files:
        try:
            reader = _header(path)
        except RuntimeError:
            raise InputError(
                f"DICOM file '{path}' cannot be read.", "Re-export the series; this file is damaged."
            ) from None
        pos, ori = _tag(reader, _TAG_POSITION), _tag(reader, _TAG_ORIENTATION)
        if not pos or not ori:
            return  # no geometry tags: nothing to check against (GDCM falls back to defaults)
        if normal is None:
            row_col = np.array([float(v) for v in ori.split("\\")]).reshape(2, 3)
            normal = np.cross(row_col[0], row_col[1])
        positions.append(float(np.dot([float(v) for v in pos.split("\\")], normal)))
    gaps = np.diff(np.array(positions))
    abs_gaps = np.abs(gaps)
    median = float(np.median(abs_gaps))
    i_max, i_min = int(np.argmax(abs_gaps)), int(np.argmin(abs_gaps))
    if abs_gaps[i_min] < 1e-3:
        raise InputError(
            f"DICOM series has duplicate slices: slices {i_min} and {i_min + 1} are both at "
            f"{positions[i_min]:.2f} mm along the slice normal.",
            "The folder probably mixes two acquisitions; export the series again or pick one with {series}.",
            settings={"series": SERIES},
        )
    uneven = abs_gaps.max() - abs_gaps.min() > _GAP_TOLERANCE * median
    if uneven or not (np.all(gaps > 0) or np.all(gaps < 0)):
        raise InputError(
            f"DICOM series has uneven slice spacing: gaps range from {abs_gaps.min():.2f} to "
            f"{abs_gaps.max():.2f} mm (largest between slices {i_max} and {i_max + 1}, at "
            f"{positions[i_max]:.2f}..{positions[i_max + 1]:.2f} mm along the normal); slices are missing or the "
            "series is not a regular volume.",
            "Re-export the complete series from the scanner/PACS, or resample it to a regular grid first.",
        )
