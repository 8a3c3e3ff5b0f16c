"""Bad inputs through the real ``clnet`` command: each case must end in one clear line and touch nothing.

Every case is built from the real example data (copied into ``tmp_path``, never modified in
place) and run as ``clnet segment CASE -o OUT --model TINY``. For each we check the exit code, that
an error is exactly one stderr line ``error: ...`` holding a key phrase (no traceback), that the
input's bytes are unchanged, and that OUT holds no partial output (no segmentation, no temp file).

Speed: starting Python and importing torch/monai/clnet costs several seconds per process on a
loaded machine, which for ~50 cases would blow the test budget. So the cases run through a *fork
server*: one helper process imports clnet once, then forks a fresh child per case that runs
``clnet/__main__.py`` with ``runpy`` exactly as ``python -m clnet`` does, with its stdout/stderr
file descriptors redirected and its exit status taken from the OS. Set ``CLNET_TEST_SPAWN=1`` to run
every case as a separate ``python -m clnet`` process instead; ``test_fork_server_matches_spawn``
checks that both give the same result on a few cases.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

CASE_TIMEOUT_S = 180

# ---------------------------------------------------------------- running the CLI

_DRIVER = r"""
import json, os, runpy, select, signal, sys, time, traceback
import clnet.cli, clnet.inference, clnet.outputs, clnet.io, clnet.checkpoint, clnet.registry
clnet.cli.build_parser()  # imports the optional subcommands too, so children start warm
import torch
# One intra-op thread: the test machine is small and shared, and OpenMP threads spinning against
# each other made a single tile take seconds. Set before forking so no thread pool exists yet.
torch.set_num_threads(1)
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    out_path, err_path = req["stdout"], req["stderr"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.update(req["env"])
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [clnet.__file__.replace("__init__.py", "__main__.py"), *req["argv"]]
            try:
                runpy.run_module("clnet", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
    deadline = time.monotonic() + req["timeout"]
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
            with open(err_path, "a") as fh:
                fh.write("\n[test driver] killed after timeout\n")
        else:
            time.sleep(0.01)
    rc = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"rc": rc}) + "\n"); sys.stdout.flush()
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkServer:
    """One warm helper process; each :meth:`run` forks a child that runs ``python -m clnet``'s code."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, argv: list[str], env: dict[str, str], cwd: Path) -> Result:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        req = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
               "timeout": CASE_TIMEOUT_S}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return Result(reply["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    """The plain way: a new ``python -m clnet`` process."""
    proc = subprocess.run([sys.executable, "-m", "clnet", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=CASE_TIMEOUT_S)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def clnet_cli(tmp_path_factory) -> Callable[..., Result]:
    if os.environ.get("CLNET_TEST_SPAWN"):
        yield spawn
        return
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    try:
        yield server.run
    finally:
        server.close()


# ---------------------------------------------------------------- checks


def digest(path: Path) -> str | None:
    """sha256 over a file, or over every file (relative name + bytes) below a folder."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()
    return None


def assert_one_error_line(result: Result, phrases: tuple[str, ...]) -> None:
    assert result.returncode != 0, f"expected failure, got 0\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "error: unexpected" not in lines[0], lines[0]
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), f"{phrase!r} not in {lines[0]!r}"


def files_below(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ---------------------------------------------------------------- building cases


@dataclass
class Ctx:
    tmp: Path
    shared: Path
    crop: Path  # 64x56x40 real CT crop, 3 mm
    model: Path


@dataclass
class Case:
    """``argv`` runs it; ``watch`` must be byte-identical afterwards; ``out`` must stay clean on error."""

    argv: list[str]
    watch: list[Path]
    out: Path
    ok: bool = False
    phrases: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    expected_size: tuple[int, int, int] | None = None


def segment(ctx: Ctx, source: Path, *extra: str, ok: bool = False, phrases: tuple[str, ...] = (),
            model: Path | None = None, watch: list[Path] | None = None,
            expected_size: tuple[int, int, int] | None = None) -> Case:
    out = ctx.tmp / "out"
    argv = ["segment", str(source), "-o", str(out), "--model", str(model or ctx.model), "-q", *extra]
    return Case(argv, watch if watch is not None else [source], out, ok, phrases, expected_size=expected_size)


def crop_image(ctx: Ctx) -> sitk.Image:
    return sitk.ReadImage(str(ctx.crop))


def write(ctx: Ctx, image: sitk.Image, name: str) -> Path:
    path = ctx.tmp / name
    sitk.WriteImage(image, str(path))
    return path


def with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def edited_nifti(ctx: Ctx, name: str, edits: dict[str, object], gz: bool = True) -> Path:
    """The crop as NIfTI-1 with header fields overwritten byte-wise (no nibabel needed).

    ``edits`` keys: 'dim' (8 shorts), 'pixdim' ({index: value}), 'qform_code', 'sform_code'.
    """
    raw = ctx.tmp / "raw.nii"
    sitk.WriteImage(crop_image(ctx), str(raw))
    data = bytearray(raw.read_bytes())
    raw.unlink()
    if "dim" in edits:
        struct.pack_into("<8h", data, 40, *edits["dim"])
    for index, value in dict(edits.get("pixdim", {})).items():
        struct.pack_into("<f", data, 76 + 4 * index, value)
    if "qform_code" in edits:
        struct.pack_into("<h", data, 252, edits["qform_code"])
    if "sform_code" in edits:
        struct.pack_into("<h", data, 254, edits["sform_code"])
    path = ctx.tmp / (name + (".nii.gz" if gz else ".nii"))
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return path


def rotated(image: sitk.Image, angles_deg: tuple[float, float, float], flip_z: bool = False) -> sitk.Image:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rz @ ry @ rx
    if flip_z:
        m = m @ np.diag([1.0, 1.0, -1.0])
    out = sitk.Image(image)
    out.SetDirection(m.ravel().tolist())
    return out


def dicom_copy(ctx: Ctx, name: str) -> Path:
    folder = ctx.tmp / name
    shutil.copytree(ctx.shared / "example_ct_dicom", folder)
    return folder


def dicom_files_by_position(folder: Path) -> list[Path]:
    import pydicom

    files = sorted(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def two_series(ctx: Ctx) -> Path:
    import pydicom

    folder = ctx.tmp / "two_series"
    folder.mkdir()
    for uid, desc in ((UID_A, "first"), (UID_B, "second")):
        for f in sorted((ctx.shared / "example_ct_dicom").iterdir()):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.SeriesDescription = desc
            ds.save_as(folder / f"{desc}_{f.name}")
    return folder


UID_A = "1.2.826.0.1.3680043.8.498.71"
UID_B = "1.2.826.0.1.3680043.8.498.72"


def model_copy(ctx: Ctx) -> Path:
    target = ctx.tmp / "model"
    shutil.copytree(ctx.model, target)
    return target


def rewrite_decoder(model: Path, change: Callable[[dict], None]) -> None:
    """Rewrite decoder 'spine' with ``change`` applied to its tensors and a *matching* sha256,
    so only the architecture check can catch it."""
    from safetensors.torch import load_file, save_file

    manifest = json.loads((model / "manifest.json").read_text())
    entry = manifest["decoders"]["spine"]
    tensors = load_file(str(model / entry["file"]))
    change(tensors)
    save_file(tensors, str(model / entry["file"]))
    entry["sha256"] = hashlib.sha256((model / entry["file"]).read_bytes()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))


def first_conv_key(model: Path) -> str:
    from safetensors import safe_open

    manifest = json.loads((model / "manifest.json").read_text())
    with safe_open(str(model / manifest["decoders"]["spine"]["file"]), "pt") as f:
        return sorted(k for k in f.keys() if k.endswith("conv.weight"))[0]


# Each builder returns the Case; names are the pytest ids.


def c_mr(ctx):
    src = ctx.tmp / "mr.nii.gz"
    shutil.copy(ctx.shared / "example_mr_sm.nii.gz", src)
    return segment(ctx, src, phrases=("does not look like a CT", "--force"))


def c_mr_force(ctx):
    src = ctx.tmp / "mr.nii.gz"
    shutil.copy(ctx.shared / "example_mr_sm.nii.gz", src)
    return segment(ctx, src, "--force", "--fast", ok=True, expected_size=(117, 91, 20))


def c_2d(ctx):
    return segment(ctx, write(ctx, crop_image(ctx)[:, :, 10], "slice.nii.gz"), phrases=("2D",))


def c_4d(ctx):
    img = crop_image(ctx)
    return segment(ctx, write(ctx, sitk.JoinSeries([img, img]), "two_phases.nii.gz"), phrases=("4D image",))


def c_4d_trailing_1(ctx):
    path = edited_nifti(ctx, "nt1", {"dim": (4, 64, 56, 40, 1, 1, 1, 1)})
    return segment(ctx, path, "--fast", ok=True, expected_size=(64, 56, 40))


def c_rgb(ctx):
    rgb = sitk.Image([24, 24, 24], sitk.sitkVectorUInt8, 3)
    return segment(ctx, write(ctx, rgb, "rgb.nrrd"), phrases=("vector/RGB",))


def c_vector_nifti(ctx):
    img = sitk.Cast(crop_image(ctx), sitk.sitkFloat32)
    return segment(ctx, write(ctx, sitk.Compose(img, img), "vector.nii.gz"), phrases=("2 values per voxel",))


def c_size0(ctx):
    # A header announcing 0 slices: ITK reads it as one slice, which must still be refused.
    path = edited_nifti(ctx, "zero_slices", {"dim": (3, 64, 56, 0, 1, 1, 1, 1)}, gz=False)
    return segment(ctx, path, phrases=("3D volume",))


def c_all_zero(ctx):
    img = crop_image(ctx)
    return segment(ctx, write(ctx, with_array(img, np.zeros(img.GetSize()[::-1], np.int16)), "zeros.nii.gz"),
                   phrases=("constant",))


def c_constant_air(ctx):
    img = crop_image(ctx)
    array = np.full(img.GetSize()[::-1], -1000, np.int16)
    return segment(ctx, write(ctx, with_array(img, array), "air.nii.gz"), phrases=("constant", "-1000"))


def c_nan(ctx, suffix=".nrrd"):
    img = crop_image(ctx)
    array = sitk.GetArrayFromImage(img).astype(np.float32)
    array[20, 30, 40] = np.nan
    array[5, 5, 5] = np.nan
    return segment(ctx, write(ctx, with_array(img, array), "nan" + suffix), phrases=("2 NaN or infinite",))


def c_nan_nifti(ctx):
    return c_nan(ctx, ".nii.gz")


def c_inf(ctx):
    img = crop_image(ctx)
    array = sitk.GetArrayFromImage(img).astype(np.float32)
    array[10, 10, 10] = np.inf
    array[11, 10, 10] = -np.inf
    return segment(ctx, write(ctx, with_array(img, array), "inf.nrrd"), phrases=("NaN or infinite",))


def c_spacing_zero_pixdim(ctx):
    # qform only, so pixdim is the sole source of the slice spacing.
    path = edited_nifti(ctx, "pixdim0", {"pixdim": {3: 0.0}, "qform_code": 1, "sform_code": 0})
    return segment(ctx, path, phrases=("spacing",))


def c_spacing_zero_nrrd(ctx):
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 16\n"
              "space directions: (1,0,0) (0,1,0) (0,0,0)\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (0,0,0)\n\n")
    array = np.full(16**3, -1000, np.int16)
    array[2000:2500] = 300
    path = ctx.tmp / "zero.nrrd"
    path.write_bytes(header.encode() + array.tobytes())
    return segment(ctx, path, phrases=("spacing",))


def c_spacing_negative_pixdim(ctx):
    path = edited_nifti(ctx, "pixdim_neg", {"pixdim": {3: -3.0}, "qform_code": 1, "sform_code": 0})
    return segment(ctx, path, phrases=("spacing",))


def c_spacing_too_large(ctx):
    img = crop_image(ctx)
    img.SetSpacing((3.0, 3.0, 25.0))
    return segment(ctx, write(ctx, img, "thick.nii.gz"), phrases=("spacing", "20 mm"))


def c_too_small(ctx):
    return segment(ctx, write(ctx, crop_image(ctx)[:, :, 18:21], "three_slices.nii.gz"), phrases=("too small",))


def c_oblique(ctx):
    path = write(ctx, rotated(crop_image(ctx), (10.0, -15.0, 30.0)), "oblique.nii.gz")
    return segment(ctx, path, "--fast", ok=True, expected_size=(64, 56, 40))


def c_left_handed(ctx):
    path = write(ctx, rotated(crop_image(ctx), (0.0, 0.0, 20.0), flip_z=True), "left_handed.nrrd")
    return segment(ctx, path, "--fast", ok=True, expected_size=(64, 56, 40))


def c_truncated_nii_gz(ctx):
    data = (ctx.shared / "example_ct_sm.nii.gz").read_bytes()
    path = ctx.tmp / "cut.nii.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    return segment(ctx, path, phrases=("truncated", "copy"))


def c_truncated_nii(ctx):
    path = write(ctx, crop_image(ctx), "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return segment(ctx, path, phrases=("truncated",))


def c_gzip_garbage(ctx):
    data = (ctx.shared / "example_ct_sm.nii.gz").read_bytes()
    noise = np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    path = ctx.tmp / "garbled.nii.gz"
    path.write_bytes(data[:12] + noise)  # a valid gzip member header, then garbage
    return segment(ctx, path, phrases=("corrupt gzip",))


def c_random_bytes(ctx):
    path = ctx.tmp / "random.nii.gz"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    return segment(ctx, path, phrases=("not gzip-compressed",))


def c_empty_file(ctx):
    path = ctx.tmp / "empty.nii"
    path.write_bytes(b"")
    return segment(ctx, path, phrases=("not a valid NIfTI",))


def c_text_nrrd(ctx):
    path = ctx.tmp / "notes.nrrd"
    path.write_text("patient notes, not an image\n" * 20)
    return segment(ctx, path, phrases=("not a valid NRRD",))


def c_nrrd_broken_header(ctx):
    src = write(ctx, crop_image(ctx), "ok.nrrd")
    data = src.read_bytes()
    cut = data.index(b"\n\n")
    header, n = re.subn(r"(?m)^type: .*$", "type: quaternion", data[:cut].decode())
    assert n == 1
    path = ctx.tmp / "broken.nrrd"
    path.write_bytes(header.encode() + data[cut:])
    src.unlink()
    return segment(ctx, path, phrases=("cannot be read as NRRD", "type"))


def c_nrrd_short_data(ctx):
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 32 32 32\n"
              "space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (0,0,0)\n\n")
    path = ctx.tmp / "short.nrrd"
    path.write_bytes(header.encode() + np.zeros(5000, np.int16).tobytes())
    return segment(ctx, path, phrases=("truncated",))


def c_unsupported_extension(ctx):
    path = ctx.tmp / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return segment(ctx, path, phrases=("Unsupported input file type", ".nii.gz"))


def c_dicom_two_series(ctx):
    folder = two_series(ctx)
    return segment(ctx, folder, phrases=("2 DICOM series", UID_A, UID_B, "--series"))


def c_dicom_series_selected(ctx):
    folder = two_series(ctx)
    return segment(ctx, folder, "--series", UID_B, "--fast", ok=True, expected_size=(512, 512, 20))


def c_dicom_series_unknown(ctx):
    folder = two_series(ctx)
    return segment(ctx, folder, "--series", "1.2.3.4", phrases=("is not in folder", UID_A))


def c_folder_without_dicom(ctx):
    folder = ctx.tmp / "nifti_folder"
    folder.mkdir()
    shutil.copy(ctx.crop, folder / "ct.nii.gz")
    (folder / "readme.txt").write_text("a scan")
    return segment(ctx, folder, phrases=("contains no DICOM files",))


def c_dicom_missing_slice(ctx):
    folder = dicom_copy(ctx, "gap")
    dicom_files_by_position(folder)[10].unlink()
    return segment(ctx, folder, phrases=("uneven slice spacing", "2.00 to 4.00 mm"))


def c_dicom_uneven_spacing(ctx):
    import pydicom

    folder = dicom_copy(ctx, "uneven")
    f = dicom_files_by_position(folder)[7]
    ds = pydicom.dcmread(f)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.7]
    ds.save_as(f)
    return segment(ctx, folder, phrases=("uneven slice spacing",))


def c_dicom_truncated_slice(ctx):
    folder = dicom_copy(ctx, "damaged")
    f = dicom_files_by_position(folder)[5]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return segment(ctx, folder, phrases=("DICOM",))


def c_missing_path(ctx):
    return segment(ctx, ctx.tmp / "no_such_scan.nii.gz", phrases=("does not exist",))


def c_output_is_a_file(ctx):
    src = ctx.tmp / "ct.nii.gz"
    shutil.copy(ctx.crop, src)
    blocker = ctx.tmp / "out"
    blocker.write_text("a file where the output folder should be")
    case = segment(ctx, src, phrases=("out",), watch=[src, blocker])
    return case


def c_output_readonly(ctx):
    src = ctx.tmp / "ct.nii.gz"
    shutil.copy(ctx.crop, src)
    locked = ctx.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):
        locked.chmod(0o700)
        pytest.skip("running with privileges that ignore folder permissions (root)")
    case = segment(ctx, src, phrases=("not writable",))
    case.argv[3] = str(locked / "out")
    case.out = locked / "out"
    return case


def c_unknown_anatomy(ctx):
    return segment(ctx, _crop_copy(ctx), "--anatomies", "Livr", phrases=("Unknown anatomy", "Liver"))


def c_anatomy_not_in_model(ctx):
    return segment(ctx, _crop_copy(ctx), "--anatomies", "Heart", phrases=("cannot segment", "Heart"))


def c_unknown_region(ctx):
    return segment(ctx, _crop_copy(ctx), "--regions", "elbow", phrases=("Unknown region", "abdomen"))


def c_device_cuda7(ctx):
    import torch

    phrase = "does not exist" if torch.cuda.is_available() else "no CUDA"
    return segment(ctx, _crop_copy(ctx), "--device", "cuda:7", phrases=(phrase,))


def c_device_tpu(ctx):
    return segment(ctx, _crop_copy(ctx), "--device", "tpu", phrases=("Unknown device", "tpu"))


def c_model_tampered(ctx):
    model = model_copy(ctx)
    target = model / "decoder_abdomen.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    src = _crop_copy(ctx)
    return segment(ctx, src, model=model, watch=[src, model], phrases=("does not match its sha256", "abdomen"))


def c_model_manifest_not_json(ctx):
    model = model_copy(ctx)
    (model / "manifest.json").write_text("{ this is not json")
    src = _crop_copy(ctx)
    return segment(ctx, src, model=model, watch=[src, model], phrases=("not valid JSON",))


def c_model_weights_missing_tensor(ctx):
    model = model_copy(ctx)
    key = first_conv_key(model)
    rewrite_decoder(model, lambda t: t.pop(key))
    src = _crop_copy(ctx)
    return segment(ctx, src, model=model, watch=[src, model], phrases=("do not match the architecture", "missing", key))


def c_model_weights_extra_tensor(ctx):
    import torch

    model = model_copy(ctx)
    rewrite_decoder(model, lambda t: t.__setitem__("smuggled.weight", torch.zeros(3)))
    src = _crop_copy(ctx)
    return segment(ctx, src, model=model, watch=[src, model], phrases=("unexpected", "smuggled.weight"))


def c_model_weights_wrong_shape(ctx):
    import torch

    model = model_copy(ctx)
    key = first_conv_key(model)

    def widen(t: dict) -> None:
        shape = list(t[key].shape)
        shape[0] += 1
        t[key] = torch.zeros(shape)

    rewrite_decoder(model, widen)
    src = _crop_copy(ctx)
    return segment(ctx, src, model=model, watch=[src, model], phrases=("wrong shape", key))


def c_model_zip_traversal(ctx):
    bad = ctx.tmp / "model.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for p in sorted(ctx.model.iterdir()):
            zf.write(p, f"tiny/{p.name}")
        zf.writestr("../../escaped.txt", "should never be written")
    home = ctx.tmp / "home"
    case = Case(["models", "install", str(bad)], [bad], ctx.tmp / "home" / "models" / "tiny",
                phrases=("unsafe member", "escaped.txt"), env={"CLNET_HOME": str(home)})
    return case


def c_overlap_too_large(ctx):
    return segment(ctx, _crop_copy(ctx), "--overlap", "1.5", phrases=("overlap",))


def c_overlap_negative(ctx):
    return segment(ctx, _crop_copy(ctx), "--overlap", "-0.5", phrases=("overlap",))


def c_overlap_nan(ctx):
    return segment(ctx, _crop_copy(ctx), "--overlap", "nan", phrases=("overlap",))


def c_dicom_seg_for_nifti_input(ctx):
    return segment(ctx, _crop_copy(ctx), "--formats", "nifti", "dicom-seg", phrases=("DICOM-SEG",))


def _crop_copy(ctx: Ctx) -> Path:
    src = ctx.tmp / "ct.nii.gz"
    if not src.exists():
        shutil.copy(ctx.crop, src)
    return src



CASES: dict[str, tuple[Callable[[Ctx], Case], str | None]] = {
    # name: (builder, xfail reason or None)
    "mr_not_ct": (c_mr, None),
    "mr_with_force": (c_mr_force, None),
    "image_2d": (c_2d, None),
    "image_4d": (c_4d, None),
    "image_4d_trailing_1": (c_4d_trailing_1, None),
    "rgb_nrrd": (c_rgb, None),
    "vector_nifti": (c_vector_nifti, None),
    "zero_slices_header": (c_size0, None),
    "all_zero": (c_all_zero, None),
    "constant_air": (c_constant_air, None),
    "nan_voxels_nrrd": (c_nan, None),
    "nan_voxels_nifti": (c_nan_nifti, None),
    "inf_voxels": (c_inf, None),
    "spacing_zero_nifti_pixdim": (c_spacing_zero_pixdim, None),
    "spacing_zero_nrrd": (c_spacing_zero_nrrd, None),
    "spacing_negative_nifti_pixdim": (c_spacing_negative_pixdim, None),
    "spacing_over_20mm": (c_spacing_too_large, None),
    "three_slices": (c_too_small, None),
    "oblique_direction": (c_oblique, None),
    "left_handed_direction": (c_left_handed, None),
    "truncated_nii_gz": (c_truncated_nii_gz, None),
    "truncated_nii": (c_truncated_nii, None),
    "gzip_with_garbage": (c_gzip_garbage, None),
    "random_bytes_nii_gz": (c_random_bytes, None),
    "empty_file_nii": (c_empty_file, None),
    "text_named_nrrd": (c_text_nrrd, None),
    "nrrd_broken_header": (c_nrrd_broken_header, None),
    "nrrd_short_data": (c_nrrd_short_data, None),
    "unsupported_extension": (c_unsupported_extension, None),
    "dicom_two_series": (c_dicom_two_series, None),
    "dicom_series_selected": (c_dicom_series_selected, None),
    "dicom_series_unknown_uid": (c_dicom_series_unknown, None),
    "folder_without_dicom": (c_folder_without_dicom, None),
    "dicom_missing_slice": (c_dicom_missing_slice, None),
    "dicom_uneven_spacing": (c_dicom_uneven_spacing, None),
    "dicom_truncated_slice": (c_dicom_truncated_slice, None),
    "missing_path": (c_missing_path, None),
    "output_is_a_file": (c_output_is_a_file, None),
    "output_readonly": (c_output_readonly, None),
    "unknown_anatomy": (c_unknown_anatomy, None),
    "anatomy_not_in_model": (c_anatomy_not_in_model, None),
    "unknown_region": (c_unknown_region, None),
    "device_cuda_7": (c_device_cuda7, None),
    "device_tpu": (c_device_tpu, None),
    "model_tampered_weights": (c_model_tampered, None),
    "model_manifest_not_json": (c_model_manifest_not_json, None),
    "model_missing_tensor": (c_model_weights_missing_tensor, None),
    "model_extra_tensor": (c_model_weights_extra_tensor, None),
    "model_wrong_shape": (c_model_weights_wrong_shape, None),
    "model_zip_path_traversal": (c_model_zip_traversal, None),
    "overlap_too_large": (c_overlap_too_large, None),
    "overlap_negative": (c_overlap_negative, None),
    "overlap_nan": (c_overlap_nan, None),
    "dicom_seg_for_nifti_leaves_no_partial_output": (c_dicom_seg_for_nifti_input, None),
}


def _params() -> list:
    return [
        pytest.param(builder, id=name, marks=[pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])
        for name, (builder, xfail) in CASES.items()
    ]


@pytest.mark.parametrize("builder", _params())
def test_bad_input(builder, clnet_cli, shared_data, ct_crop, tiny_model_dir, tmp_path):
    ctx = Ctx(tmp_path, shared_data, ct_crop, tiny_model_dir)
    case = builder(ctx)
    before = {p: digest(p) for p in case.watch}
    result = clnet_cli(case.argv, case.env, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    if case.ok:
        assert result.returncode == 0, result.stderr
        seg = case.out / "segmentation.nii.gz"
        assert seg.is_file() and (case.out / "segmentation.json").is_file()
        if case.expected_size:
            assert sitk.ReadImage(str(seg)).GetSize() == case.expected_size
        assert not [n for n in files_below(case.out) if ".tmp" in n]
    else:
        assert_one_error_line(result, case.phrases)
        assert files_below(case.out) == [] or case.out in case.watch, files_below(case.out)
    for p, h in before.items():
        assert digest(p) == h, f"{p} was modified"
    assert not list(tmp_path.rglob("escaped.txt"))


def test_case_count():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", ["mr_not_ct"])
def test_fork_server_matches_spawn(name, clnet_cli, shared_data, ct_crop, tiny_model_dir, tmp_path):
    """The fork server reports what a fresh ``python -m clnet`` reports (same code, same exit status)."""
    case = CASES[name][0](Ctx(tmp_path, shared_data, ct_crop, tiny_model_dir))
    served = clnet_cli(case.argv, case.env, tmp_path)
    spawned = spawn(case.argv, case.env, tmp_path)
    assert (served.returncode, served.stderr, served.stdout) == (spawned.returncode, spawned.stderr, spawned.stdout)
