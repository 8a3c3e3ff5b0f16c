"""Read a CT image from NIfTI, NRRD, MetaImage or a DICOM series, with actionable errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from .dicom_series import check_slice_spacing, is_dicom_file, select_series, series_uid_of_file
from .integrity import check_nifti_complete, check_nrrd_text_encoding
from .nifti_header import read_xform_codes
from .validate import validate_ct

__all__ = ["LoadedImage", "read_image", "validate_ct"]

# ITK prints warnings (e.g. "unexpected scales in sform", GDCM's "No Series were found") straight to
# stderr; our own messages say what matters, so a user sees one clear line, not ITK's chatter.
sitk.ProcessObject.SetGlobalWarningDisplay(False)

_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_DICOM_SUFFIXES = {".dcm", ".ima", ".dicom", ""}
_SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM series folder"


@dataclass
class LoadedImage:
    """A 3D scalar image as read (original geometry) and where it came from."""

    image: sitk.Image
    path: Path
    source_format: str
    dicom_files: list[Path] | None = None
    series_uid: str | None = None
    #: ``(qform_code, sform_code)`` of a NIfTI input, for outputs to carry (ITK drops them)
    nifti_xform_codes: tuple[int, int] | None = None


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | Path, series_uid: str | None = None) -> LoadedImage:
    """Read ``path`` (image file, DICOM folder or one DICOM file) into a 3D scalar image.

    Raises :class:`InputError` with a specific message for every way the input can be unusable.
    The input is only ever opened for reading.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist.", "Check the path (and that the drive is mounted).")
    if path.is_dir():
        return _read_dicom(path, series_uid)
    ext = _extension(path)
    if ext in _FORMATS:
        fmt = _FORMATS[ext]
        image = _read_file(path, fmt)  # checks the file first, so the header read below is safe
        codes = read_xform_codes(path) if fmt == "nifti" else None
        return LoadedImage(image, path, fmt, nifti_xform_codes=codes)
    if is_dicom_file(path) or (ext in _DICOM_SUFFIXES and _gdcm_can_read(path)):
        uid = series_uid if series_uid is not None else series_uid_of_file(path)
        return _read_dicom(path.parent, uid)
    raise InputError(
        f"Unsupported input file type '{ext or path.name}' for '{path}'.",
        f"Use {_SUPPORTED}.",
    )


def _gdcm_can_read(path: Path) -> bool:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetImageIO() == "GDCMImageIO"


def _reader_failure(path: Path, fmt: str, exc: RuntimeError) -> InputError:
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return InputError(
            f"'{path}' is not a valid {fmt.upper()} image: its contents are not recognised as an image.",
            "Check that the file really is an image and not misnamed; re-export it if needed.",
        )
    # ITK messages are multi-line with source locations; keep the last meaningful line.
    reason = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    # MetaImage reports a short read as "No such file or directory", which would mislead here.
    detail = f" ({reason})" if reason and "No such file" not in reason else ""
    return InputError(
        f"'{path}' cannot be read as {fmt.upper()}: the file is damaged or truncated{detail}.",
        "Copy or export the image again.",
    )


def _read_file(path: Path, fmt: str) -> sitk.Image:
    if fmt == "nifti":
        check_nifti_complete(path)
    elif fmt == "nrrd":
        check_nrrd_text_encoding(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_shape(path, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
        image = reader.Execute()
    except RuntimeError as exc:
        raise _reader_failure(path, fmt, exc) from None
    return _as_3d(path, image)


def _read_dicom(folder: Path, series_uid: str | None) -> LoadedImage:
    uid, files = select_series(folder, series_uid)
    check_slice_spacing(files)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    # Per-slice dictionaries are large and unused: geometry comes from the volume itself.
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), "")
        raise InputError(
            f"DICOM series '{uid or '<empty UID>'}' in '{folder}' cannot be decoded ({reason}).",
            "The transfer syntax may be unsupported or a file damaged; export the series uncompressed or as NIfTI.",
        ) from None
    return LoadedImage(_as_3d(folder, image), folder, "dicom", files, uid)


def _check_shape(path: Path, dim: int, size: tuple[int, ...], components: int) -> None:
    if components != 1:
        raise InputError(
            f"'{path}' has {components} values per voxel (vector/RGB image); a CT has one.",
            "Provide the grey-value CT volume, not a colour or vector image.",
        )
    if dim < 3 or (dim == 3 and 1 in size):
        raise InputError(
            f"'{path}' is a 2D image (size {'x'.join(map(str, size))}); segmentation needs a 3D volume.",
            "Provide the whole CT series or volume, not a single slice.",
        )
    if dim > 3 and any(s > 1 for s in size[3:]):
        raise InputError(
            f"'{path}' is a {dim}D image (size {'x'.join(map(str, size))}); segmentation needs one 3D volume.",
            "Extract a single time point/volume (e.g. one phase) and pass that.",
        )


def _as_3d(path: Path, image: sitk.Image) -> sitk.Image:
    """Check the decoded image and drop trailing singleton dimensions (e.g. NIfTI with nt=1)."""
    _check_shape(path, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    if image.GetDimension() > 3:
        size = list(image.GetSize()[:3]) + [0] * (image.GetDimension() - 3)
        image = sitk.Extract(image, size, [0] * image.GetDimension())
    return image
