"""Fuzz the NIfTI and NRRD header handling of ``read_image`` + ``validate_ct``.

A small valid image is written once; hypothesis then overwrites header fields (NIfTI-1: dims,
pixdim, datatype, bitpix, vox_offset, qform/sform codes and parameters, scaling, raw bytes) or
composes NRRD text headers (sizes, type, encoding, space directions, ...). Whatever the header says,
the only allowed outcomes are a valid 3D scalar image or a :class:`clnet.errors.ClnetError`; any
other exception is a bug, and the file on disk must never change.

Sizes are kept small on purpose: a header announcing billions of voxels is exactly what the
size checks should catch, but if a reader were to allocate first, the test machine (shared) would
pay for it. ``faulthandler`` turns a hang into a visible failure with a traceback.
"""

from __future__ import annotations

import faulthandler
import gzip
import hashlib
import math
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.errors import ClnetError
from clnet.io import read_image, validate_ct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HANG_LIMIT_S = 120  # per test; a whole fuzz test normally takes a few seconds
# CLNET_FUZZ_EXAMPLES=2000 CLNET_FUZZ_RANDOM=1 for a deeper local run; CI runs a fixed, fast set.
EXAMPLES = int(os.environ.get("CLNET_FUZZ_EXAMPLES", "80"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("CLNET_FUZZ_RANDOM"),
    database=None,  # no .hypothesis folder in the shared tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# NIfTI-1 header: field → (byte offset, struct code).
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "i"),
    "dim_info": (39, "b"),
    "intent_code": (68, "h"),
    "datatype": (70, "h"),
    "bitpix": (72, "h"),
    "vox_offset": (108, "f"),
    "scl_slope": (112, "f"),
    "scl_inter": (116, "f"),
    "xyzt_units": (123, "B"),
    "qform_code": (252, "h"),
    "sform_code": (254, "h"),
    **{f"dim{i}": (40 + 2 * i, "h") for i in range(8)},
    **{f"pixdim{i}": (76 + 4 * i, "f") for i in range(8)},
    **{f"quatern{i}": (256 + 4 * i, "f") for i in range(6)},  # b, c, d, qoffset x, y, z
    **{f"srow{i}": (280 + 4 * i, "f") for i in range(12)},
}
NIFTI_DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 255, -4]

odd_floats = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 1.0, 3.0, -3.0, 1e-12, 1e12, 348.0, 352.0, math.nan, math.inf, -math.inf]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)
small_shorts = st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 7, 8, 32767, -32768]))


def _base_image() -> sitk.Image:
    """A tiny CT-like volume (air, tissue, bone) that passes ``validate_ct``."""
    array = np.full((9, 10, 12), -1000, np.int16)
    array[2:-2, 2:-2, 2:-2] = 40
    array[4:-4, 4:-4, 4:-4] = 700
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.2, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    return image


@pytest.fixture(scope="module")
def nifti_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base.nii"
        sitk.WriteImage(_base_image(), str(path))
        data = path.read_bytes()
    assert struct.unpack("<i", data[:4])[0] == 348
    return data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def hang_guard():
    # A reader stuck in C code cannot be interrupted from Python; dump every thread and exit instead.
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def check_outcome(path: Path) -> str:
    """Read + validate; return 'ok' or 'refused'. Any other exception propagates (= a bug)."""
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        loaded = read_image(path)
        image = loaded.image
        assert image.GetDimension() == 3, image.GetDimension()
        assert image.GetNumberOfComponentsPerPixel() == 1
        validate_ct(image)
        outcome = "ok"
    except ClnetError as exc:
        assert str(exc).strip(), "an error must say something"
        assert "\n" not in str(exc), f"multi-line message: {exc!s}"
        outcome = "refused"
    finally:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the input file was modified"
    return outcome


def test_base_files_are_accepted(nifti_bytes, workdir):
    plain = workdir / "base.nii"
    plain.write_bytes(nifti_bytes)
    packed = workdir / "base.nii.gz"
    packed.write_bytes(gzip.compress(nifti_bytes))
    nrrd = workdir / "base.nrrd"
    nrrd.write_bytes(nrrd_file({}, b""))
    assert check_outcome(plain) == check_outcome(packed) == check_outcome(nrrd) == "ok"


nifti_edit = st.one_of(
    st.tuples(st.sampled_from([f"dim{i}" for i in range(8)]), small_shorts),
    st.tuples(st.sampled_from([f"pixdim{i}" for i in range(8)]), odd_floats),
    st.tuples(st.just("datatype"), st.sampled_from(NIFTI_DATATYPES)),
    st.tuples(st.just("bitpix"), st.sampled_from([0, 1, 8, 16, 24, 32, 64, 128, -16])),
    st.tuples(st.just("vox_offset"), st.sampled_from([0.0, 100.0, 348.0, 351.0, 352.0, 356.0, 2000.0, -352.0, 1e30,
                                                      math.nan, math.inf])),
    st.tuples(st.sampled_from(["qform_code", "sform_code"]), st.integers(-2, 6)),
    st.tuples(st.sampled_from([f"quatern{i}" for i in range(6)] + [f"srow{i}" for i in range(12)]), odd_floats),
    st.tuples(st.sampled_from(["scl_slope", "scl_inter"]), odd_floats),
    st.tuples(st.sampled_from(["sizeof_hdr", "intent_code", "dim_info", "xyzt_units"]), st.integers(-5, 600)),
)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nifti_nonfinite_vox_offset(nifti_bytes, workdir, value):
    path = workdir / "voxoffset.nii"
    path.write_bytes(apply_nifti_edits(nifti_bytes, [("vox_offset", value)], []))
    assert check_outcome(path) == "refused"


def apply_nifti_edits(data: bytes, edits: list[tuple[str, object]], flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for name, value in edits:
        offset, code = NIFTI_FIELDS[name]
        if code == "B":
            value = int(value) % 256
        elif code == "b":
            value = (int(value) + 128) % 256 - 128
        struct.pack_into("<" + code, out, offset, value)
    for offset, byte in flips:
        out[offset] = byte
    return bytes(out)


@settings(FUZZ)
@given(
    edits=st.lists(nifti_edit, min_size=1, max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), max_size=2),
    cut=st.one_of(st.none(), st.integers(0, 3000)),
    compressed=st.booleans(),
)
def test_nifti_header_mutations(nifti_bytes, workdir, edits, flips, cut, compressed):
    data = apply_nifti_edits(nifti_bytes, edits, flips)
    if cut is not None:
        data = data[:cut]
    path = workdir / ("case.nii.gz" if compressed else "case.nii")
    path.write_bytes(gzip.compress(data) if compressed else data)
    check_outcome(path)


# ---------------------------------------------------------------- NRRD

NRRD_TYPES = ["short", "int16", "unsigned char", "uchar", "int", "float", "double", "signed char", "ushort",
              "long long", "block", "quaternion", "short short", ""]
NRRD_ENCODINGS = ["raw", "gzip", "hex", "bzip2", "zip", "lzma", "", "txt-ish", "ascii", "text"]
BASE_NRRD = {
    "type": "short",
    "dimension": "3",
    "space": "left-posterior-superior",
    "sizes": "12 10 9",
    "space directions": "(1.5,0,0) (0,1.2,0) (0,0,2.5)",
    "kinds": "domain domain domain",
    "endian": "little",
    "encoding": "raw",
    "space origin": "(-10,5,30)",
}


def nrrd_file(fields: dict[str, str | None], extra: bytes, data: bytes | None = None) -> bytes:
    """An NRRD with ``fields`` overriding the valid base header (None removes a field)."""
    header = {**BASE_NRRD, **fields}
    text = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in header.items() if v is not None) + "\n"
    if data is None:
        data = sitk.GetArrayFromImage(_base_image()).astype("<i2").tobytes()
    return text.encode("latin-1") + data + extra


def _vector(xs) -> str:
    return "(" + ",".join(repr(float(x)) if math.isfinite(x) else str(x) for x in xs) + ")"


nrrd_number = st.one_of(st.sampled_from([0.0, -1.0, 1.0, 2.5, 1e-9, 25.0, math.nan, math.inf]),
                        st.floats(-50, 50, allow_nan=False))
nrrd_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(NRRD_TYPES), st.none()),
        "dimension": st.one_of(st.sampled_from(["0", "1", "2", "3", "4", "-1", "x"]), st.none()),
        # Voxel counts stay small (see module docstring); zero/negative/garbage sizes are the point.
        "sizes": st.one_of(
            st.lists(st.integers(-2, 14), min_size=1, max_size=5).map(lambda v: " ".join(map(str, v))),
            st.sampled_from(["12 10 9", "12 10", "12 10 9 1", "12 10 9 2", "a b c", "", "12 10 9 9 9 9"]),
            st.none(),
        ),
        "encoding": st.one_of(st.sampled_from(NRRD_ENCODINGS), st.none()),
        "endian": st.sampled_from(["little", "big", "middle"]),
        "space": st.sampled_from(["left-posterior-superior", "RAS", "scanner-xyz", "3D-right-handed", "bogus"]),
        "space directions": st.one_of(
            st.lists(st.lists(nrrd_number, min_size=3, max_size=3), min_size=2, max_size=4).map(
                lambda vs: " ".join(_vector(v) for v in vs)),
            st.sampled_from(["none (1,0,0) (0,1,0) (0,0,1)", "(1,0) (0,1) (0,0)", "garbage"]),
            st.none(),
        ),
        "space origin": st.one_of(st.lists(nrrd_number, min_size=2, max_size=4).map(_vector), st.none()),
        "kinds": st.sampled_from(["domain domain domain", "RGB-color domain domain domain", "list domain domain",
                                  "domain"]),
        "byte skip": st.sampled_from(["0", "-1", "10", "100000"]),
        "spacings": st.sampled_from(["1 1 1", "0 0 0", "nan 1 1", "-2 1 1"]),
        "line skip": st.sampled_from(["0", "3"]),
    },
)


@settings(FUZZ)
@given(
    fields=nrrd_fields,
    data=st.one_of(st.none(), st.binary(max_size=4000)),
    extra=st.binary(max_size=64),
)
def test_nrrd_header_mutations(workdir, fields, data, extra):
    path = workdir / "case.nrrd"
    path.write_bytes(nrrd_file(fields, extra, data))
    check_outcome(path)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(
    header_cut=st.integers(0, 300),
    junk=st.binary(max_size=200),
)
def test_nrrd_truncated_or_garbled_text(workdir, header_cut, junk):
    whole = nrrd_file({}, b"")
    path = workdir / "cut.nrrd"
    path.write_bytes(whole[:header_cut] + junk)
    check_outcome(path)


def test_nrrd_ascii_encoding_with_binary_data_does_not_crash(workdir):
    path = workdir / "ascii.nrrd"
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 12 10 9\nencoding: ascii\n\n"
    path.write_bytes(header.encode() + np.zeros(1080, "<i2").tobytes())
    # In a forked child: a segfault must fail this test, not kill the test session.
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = {"ok": 0, "refused": 0}[check_outcome(path)]
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"reader died: wait status {status}"
