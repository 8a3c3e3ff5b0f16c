"""File integrity checks that SimpleITK skips.

ITK's NIfTI reader silently zero-fills the missing part of a truncated ``.nii`` or ``.nii.gz``,
so a half-copied scan would be segmented without complaint. We compare the bytes on disk with
what the header announces before handing the file to SimpleITK.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

from ..errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


def nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a complete single-file NIfTI-1/2 holds (header + voxel data), or None if not NIfTI."""
    if len(header) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
        elif sizeof_hdr == 540 and len(header) >= 540:
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7 or any(d < 0 for d in dims[1 : ndim + 1]) or bitpix <= 0:
            return None
        # vox_offset is the data start; a bogus small value still cannot overlap the header.
        start = max(int(vox_offset), sizeof_hdr + 4)
        return start + prod(dims[1 : ndim + 1]) * bitpix // 8
    return None


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
        header, total = _scan_gzip(path)
    else:
        with open(path, "rb") as fh:
            header = fh.read(540)
        total = path.stat().st_size
    expected = nifti_expected_bytes(header)
    if expected is None:
        raise InputError(
            f"'{path}' is not a valid NIfTI file (its header is not NIfTI-1 or NIfTI-2).",
            "Check that the file really is a NIfTI image, or convert it to .nii.gz / .nrrd.",
        )
    if total < expected:
        raise _truncated(path, total, expected)


def _scan_gzip(path: Path) -> tuple[bytes, int]:
    """Decompress the whole stream once (in chunks) to get the first bytes and the total length."""
    header = b""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            # Header first, so a truncation error can still say how many bytes were expected.
            header = fh.read(540)
            total = len(header)
            while chunk := fh.read(_CHUNK):
                total += len(chunk)
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
    return header, total
