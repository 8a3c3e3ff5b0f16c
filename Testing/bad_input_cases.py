"""The bad-input cases of ``test_bad_inputs.py``: one builder per case and the table ``CASES``
(name → builder, xfail reason)."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bad_input_builders import (
    UID_A,
    UID_B,
    Case,
    Ctx,
    crop_image,
    dicom_copy,
    dicom_files_by_position,
    edited_nifti,
    first_conv_key,
    model_copy,
    rewrite_decoder,
    rotated,
    segment,
    two_series,
    with_array,
    write,
)

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
    data = ctx.crop.read_bytes()
    path = ctx.tmp / "cut.nii.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    return segment(ctx, path, phrases=("truncated", "copy"))


def c_truncated_nii(ctx):
    path = write(ctx, crop_image(ctx), "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return segment(ctx, path, phrases=("truncated",))


def c_gzip_garbage(ctx):
    data = ctx.crop.read_bytes()
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


def c_output_cannot_be_created(ctx):
    # Root may "write" anywhere by permissions, but not create a folder in /proc: found before any work.
    case = segment(ctx, _crop_copy(ctx), phrases=("/proc/clnet_out", "output"))
    case.argv[3] = "/proc/clnet_out"
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
    "output_cannot_be_created": (c_output_cannot_be_created, None),
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
