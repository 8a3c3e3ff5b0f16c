"""The two NIfTI header fields SimpleITK does not carry over: ``qform_code`` and ``sform_code``.

They say what the stored transforms mean (1 scanner, 2 aligned to another image, 3 Talairach, 4 MNI;
0 unset). ITK reads the transform but writes both codes as 1, so a label map made from a CT stored
with sform 2 / qform 0 would come back labelled as scanner coordinates. We read the input's codes and
set them in our NIfTI outputs; the transforms themselves are the ones ITK wrote (the same affine).
"""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path

# (offset of qform_code, offset of sform_code, struct format) per header size.
_FIELDS = {348: (252, 254, "h"), 540: (344, 348, "i")}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22
#: What ITK writes on its own (scanner coordinates in both).
ITK_CODES = (1, 1)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _layout(header: bytes) -> tuple[str, int, int, str] | None:
    """(byte order, qform offset, sform offset, format) of a NIfTI-1/2 header, or None."""
    for endian in "<>":
        if len(header) >= 4:
            (size,) = struct.unpack(endian + "i", header[:4])
            if size in _FIELDS and len(header) >= size:
                q, s, fmt = _FIELDS[size]
                return endian, q, s, fmt
    return None


def read_xform_codes(path: str | Path) -> tuple[int, int] | None:
    """``(qform_code, sform_code)`` of a NIfTI file (``.nii`` or ``.nii.gz``), or None if it is not one."""
    path = Path(path)
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as fh:
            header = fh.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    layout = _layout(header)
    if layout is None:
        return None
    endian, q, s, fmt = layout
    size = struct.calcsize(fmt)
    return (struct.unpack(endian + fmt, header[q : q + size])[0], struct.unpack(endian + fmt, header[s : s + size])[0])


def _patch(fh, codes: tuple[int, int]) -> None:
    """Overwrite the codes in an open, seekable, uncompressed NIfTI file."""
    fh.seek(0)
    layout = _layout(fh.read(540))
    if layout is None:
        raise ValueError("not a NIfTI-1/2 header")
    endian, q, s, fmt = layout
    for offset, value in zip((q, s), codes):
        fh.seek(offset)
        fh.write(struct.pack(endian + fmt, int(value)))


def set_xform_codes(path: str | Path, codes: tuple[int, int]) -> None:
    """Set ``(qform_code, sform_code)`` in an existing NIfTI file (plain or gzip-compressed).

    A ``.nii.gz`` is decompressed to a sibling file, patched and compressed again, streamed.
    """
    path = Path(path)
    if not _is_gzip(path):
        with open(path, "r+b") as fh:
            _patch(fh, codes)
        return
    raw = path.with_name(path.name + ".raw")
    try:
        with gzip.open(path, "rb") as src, open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        with open(raw, "r+b") as fh:
            _patch(fh, codes)
        _compress(raw, path)
    finally:
        raw.unlink(missing_ok=True)


def write_nifti(image, path: str | Path, codes: tuple[int, int] | None = None) -> None:
    """Write ``image`` (SimpleITK) as NIfTI at ``path`` (``.nii`` or ``.nii.gz``) with these xform codes.

    ITK writes (1, 1); other codes cost a rewrite: the image is written uncompressed, its header
    patched in place and then compressed (stock zlib, about 2-3x ITK's own compression time), so
    the usual (1, 1) input keeps ITK's fast path. The gzip stream carries no timestamp, so equal
    images give equal files.
    """
    import SimpleITK as sitk

    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    if codes is None or tuple(codes) == ITK_CODES or not any(codes):
        sitk.WriteImage(image, str(path), useCompression=compressed)
        return
    if not compressed:
        sitk.WriteImage(image, str(path), useCompression=False)
        with open(path, "r+b") as fh:
            _patch(fh, codes)
        return
    raw = path.with_name(path.name[: -len(".gz")] + ".raw.nii")
    try:
        sitk.WriteImage(image, str(raw), useCompression=False)
        with open(raw, "r+b") as fh:
            _patch(fh, codes)
        _compress(raw, path)
    finally:
        raw.unlink(missing_ok=True)


def _compress(raw: Path, target: Path) -> None:
    with open(raw, "rb") as src, open(target, "wb") as out_fh:
        with gzip.GzipFile(fileobj=out_fh, mode="wb", compresslevel=6, mtime=0, filename="") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
