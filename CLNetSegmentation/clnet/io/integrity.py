"""File integrity checks that SimpleITK skips.

ITK's NIfTI reader silently zero-fills the missing part of a truncated ``.nii`` or ``.nii.gz``,
so a half-copied scan would be segmented without complaint. We compare the bytes on disk with
what the header announces before handing the file to SimpleITK.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ..errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class NiftiLayout:
    """What a NIfTI header says about where the voxels are and what they are."""

    data_start: int
    data_bytes: int
    datatype: int
    endian: str
    pixdim: tuple[float, ...]

    @property
    def expected_bytes(self) -> int:
        return self.data_start + self.data_bytes

    @property
    def float_dtype(self) -> np.dtype | None:
        """numpy dtype for float voxel types (where NaN/Inf can occur), else None."""
        kind = {16: "f4", 64: "f8"}.get(self.datatype)
        return np.dtype(self.endian + kind) if kind else None


def nifti_layout(header: bytes) -> NiftiLayout | None:
    """Parse a NIfTI-1/2 header (or return None when it is not NIfTI or not sane)."""
    if len(header) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            (datatype, bitpix) = struct.unpack(endian + "hh", header[70:74])
            pixdim = struct.unpack(endian + "8f", header[76:108])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
        elif sizeof_hdr == 540 and len(header) >= 540:
            (datatype, bitpix) = struct.unpack(endian + "hh", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            pixdim = struct.unpack(endian + "8d", header[104:168])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7 or any(d < 0 for d in dims[1 : ndim + 1]) or bitpix <= 0:
            return None
        if not math.isfinite(vox_offset):
            return None
        # vox_offset is the data start; a bogus small value still cannot overlap the header.
        start = max(int(vox_offset), sizeof_hdr + 4)
        return NiftiLayout(start, prod(dims[1 : ndim + 1]) * bitpix // 8, datatype, endian,
                           tuple(pixdim[1 : ndim + 1]))
    return None


def nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a complete single-file NIfTI-1/2 holds (header + voxel data), or None if not NIfTI."""
    layout = nifti_layout(header)
    return layout.expected_bytes if layout else None


class _NonFiniteCounter:
    """Counts NaN/Inf voxels of a float NIfTI while its bytes stream past (ITK turns them into 0)."""

    def __init__(self, layout: NiftiLayout | None) -> None:
        self.dtype = layout.float_dtype if layout else None
        self.start = layout.data_start if layout else 0
        self.end = layout.expected_bytes if layout else 0
        self.pos = 0
        self.carry = b""
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        if self.dtype is None:
            return
        lo, hi = self.pos, self.pos + len(chunk)
        self.pos = hi
        a, b = max(lo, self.start), min(hi, self.end)
        if a >= b:
            return
        data = self.carry + chunk[a - lo : b - lo]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[usable:]
        values = np.frombuffer(data[:usable], dtype=self.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))


def _truncated(path: Path, have: int, want: int) -> InputError:
    return InputError(
        f"'{path}' is truncated: it holds {have:,} bytes of image data where its header announces {want:,}.",
        "The download or copy was probably interrupted; copy the file again.",
    )


def check_nifti_complete(path: Path) -> None:
    """Raise :class:`InputError` if a ``.nii``/``.nii.gz`` file is truncated, not gzip, or corrupt."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if path.name.lower().endswith(".gz"):
        if magic != _GZIP_MAGIC:
            raise InputError(
                f"'{path}' is named .gz but is not gzip-compressed: the file is corrupt or misnamed.",
                "Re-export the image as NIfTI (.nii.gz) or NRRD and try again.",
            )
        header, total, non_finite = _scan_gzip(path)
    else:
        header, total, non_finite = _scan_plain(path)
    layout = nifti_layout(header)
    if layout is None:
        raise InputError(
            f"'{path}' is not a valid NIfTI file (its header is not NIfTI-1 or NIfTI-2).",
            "Check that the file really is a NIfTI image, or convert it to .nii.gz / .nrrd.",
        )
    if total < layout.expected_bytes:
        raise _truncated(path, total, layout.expected_bytes)
    bad = [v for v in layout.pixdim[:3] if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InputError(
            f"'{path}' has an invalid voxel spacing in its header (pixdim {list(layout.pixdim[:3])}): "
            "spacings must be positive numbers.",
            "Fix the header (or re-export the image) so that every voxel size is in millimetres and > 0.",
        )
    if non_finite:
        raise InputError(
            f"'{path}' contains {non_finite:,} NaN or infinite voxel values.",
            "Replace them (e.g. with -1024 HU) or re-export the image; a CT holds finite HU values only.",
        )


def _scan_plain(path: Path) -> tuple[bytes, int, int]:
    """Header, file length and non-finite voxel count of an uncompressed .nii."""
    with open(path, "rb") as fh:
        header = fh.read(540)
        counter = _NonFiniteCounter(nifti_layout(header))
        counter.feed(header)
        while chunk := fh.read(_CHUNK):
            counter.feed(chunk)
    return header, path.stat().st_size, counter.count


def _scan_gzip(path: Path) -> tuple[bytes, int, int]:
    """Decompress the whole stream once (in chunks): first bytes, total length, non-finite count."""
    header = b""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            # Header first, so a truncation error can still say how many bytes were expected.
            header = fh.read(540)
            total = len(header)
            counter = _NonFiniteCounter(nifti_layout(header))
            counter.feed(header)
            while chunk := fh.read(_CHUNK):
                total += len(chunk)
                counter.feed(chunk)
    except EOFError:
        expected = nifti_expected_bytes(header)
        if expected is not None:
            raise _truncated(path, total, expected) from None
        raise InputError(
            f"'{path}' is truncated: its gzip stream ends before the end-of-stream marker.",
            "The download or copy was probably interrupted; copy the file again.",
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InputError(
            f"'{path}' is a corrupt gzip file ({exc}).",
            "Copy or export the image again; the file on disk is damaged.",
        ) from None
    return header, total, counter.count


_TEXT_ENCODINGS = {"ascii", "text", "txt"}
_NUMBER_BYTES = frozenset(b"0123456789+-.eEinfINFaA \t\r\n")


def check_nrrd_text_encoding(path: Path) -> None:
    """Refuse a text-encoded NRRD whose data is not text: ITK's reader crashes the process on it."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    header, sep, data = head.partition(b"\n\n")
    if not sep:
        header, sep, data = head.partition(b"\r\n\r\n")
    fields = {}
    for line in header.splitlines()[1:]:
        key, colon, value = line.decode("latin-1").partition(":")
        if colon:
            fields[key.strip().lower()] = value.strip().lower()
    if fields.get("encoding") not in _TEXT_ENCODINGS:
        return
    if "data file" in fields or "datafile" in fields:
        name = fields.get("data file") or fields.get("datafile") or ""
        target = path.parent / name
        data = target.read_bytes()[: 1 << 16] if target.is_file() else b""
    if not sep and "data file" not in fields and "datafile" not in fields:
        data = b""
    if not data or not set(data) <= _NUMBER_BYTES:
        raise InputError(
            f"'{path}' says its voxels are stored as text (encoding: {fields['encoding']}) but they are not.",
            "The file is damaged or mislabelled; re-export it as a raw or gzip NRRD, or as NIfTI.",
        )
