"""Tests for clnet.io: reading and checking inputs, writing outputs, statistics, preview, Dice."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.catalog.anatomy import Anatomy
from clnet.catalog.terminology import Code, Terminology
from clnet.errors import InputError, OutputError
from clnet.io import (
    anatomy_statistics,
    atomic_write,
    dice_per_label,
    read_image,
    validate_ct,
    write_dicom_seg,
    write_json,
    write_label_image,
    write_preview_png,
    write_seg_nrrd,
    write_statistics_csv,
)

STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
ANATOMIES = [
    Anatomy(1, "spleen", "Spleen", "abdomen", None, (157, 108, 162),
            Terminology(STRUCTURE, Code("SCT", "78961009", "Spleen"))),
    Anatomy(2, "kidney_right", "Right kidney", "abdomen", None, (185, 102, 83),
            Terminology(STRUCTURE, Code("SCT", "64033007", "Kidney"), Code("SCT", "24028007", "Right"))),
    Anatomy(5, "liver", "Liver", "abdomen", None, (221, 130, 101), None),
    Anatomy(7, "pancreas", "Pancreas", "abdomen", None, (249, 180, 111), None),
]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hash(folder: Path) -> str:
    return hashlib.sha256(b"".join(sha256(p).encode() for p in sorted(folder.iterdir()))).hexdigest()


def assert_input_error(path: Path, phrase: str, **kwargs) -> InputError:
    """read_image(path) raises InputError mentioning ``phrase`` and leaves the input untouched."""
    before = tree_hash(path) if path.is_dir() else sha256(path)
    with pytest.raises(InputError) as info:
        read_image(path, **kwargs)
    assert phrase in str(info.value)
    assert "\n" not in str(info.value)
    assert (tree_hash(path) if path.is_dir() else sha256(path)) == before
    return info.value


def ct_like(size=(20, 18, 16), spacing=(1.5, 1.5, 2.0), dtype=np.int16) -> sitk.Image:
    """A small synthetic CT: air around a soft-tissue block with a bone core."""
    z, y, x = size[2], size[1], size[0]
    array = np.full((z, y, x), -1000, dtype=dtype)
    array[2:-2, 3:-3, 3:-3] = 40
    array[6:-6, 7:-7, 7:-7] = 700
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_read_formats_roundtrip(shared_data, tmp_path, suffix):
    original = read_image(shared_data / "example_ct_sm.nii.gz")
    assert original.source_format == "nifti" and original.dicom_files is None
    copy = tmp_path / f"ct{suffix}"
    sitk.WriteImage(original.image, str(copy), useCompression=suffix != ".nii")
    loaded = read_image(copy)
    assert loaded.source_format == {".nrrd": "nrrd", ".mha": "mha", ".nii": "nifti"}[suffix]
    assert same_geometry(loaded.image, original.image)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(loaded.image), sitk.GetArrayViewFromImage(original.image)
    )


def test_read_real_ct_passes_validation(example_ct):
    loaded = read_image(example_ct)
    assert loaded.image.GetSize() == (122, 101, 112)
    assert validate_ct(loaded.image) == []
    assert loaded.nifti_xform_codes == (0, 2)  # qform 0, sform 2: what NIfTI outputs will carry


def test_read_dicom_series_geometry(shared_data):
    folder = shared_data / "example_ct_dicom"
    loaded = read_image(folder)
    assert loaded.source_format == "dicom"
    assert loaded.image.GetSize() == (512, 512, 20)
    assert np.allclose(loaded.image.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-4)
    assert np.allclose(loaded.image.GetDirection(), np.eye(3).ravel())
    assert len(loaded.dicom_files) == 20 and loaded.series_uid is not None
    validate_ct(loaded.image)
    # A single file of the series stands for its whole series.
    one = read_image(loaded.dicom_files[3])
    assert one.image.GetSize() == (512, 512, 20) and one.dicom_files == loaded.dicom_files


def _copy_series(src: Path, dst: Path, series_uid: str, description: str) -> None:
    pydicom = pytest.importorskip("pydicom")
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.save_as(dst / f"{description}_{f.name}")


def test_two_series_folder_lists_both_then_selects(shared_data, tmp_path):
    folder = tmp_path / "two"
    _copy_series(shared_data / "example_ct_dicom", folder, "1.2.826.0.1.3680043.8.498.1", "first")
    _copy_series(shared_data / "example_ct_dicom", folder, "1.2.826.0.1.3680043.8.498.2", "second")
    error = assert_input_error(folder, "2 DICOM series")
    text = str(error)
    assert "1.2.826.0.1.3680043.8.498.1 'first' (20 slices)" in text
    assert "1.2.826.0.1.3680043.8.498.2 'second' (20 slices)" in text
    assert 'series_uid="UID"' in text and "--series UID" in str(error.for_caller("cli"))
    loaded = read_image(folder, series_uid="1.2.826.0.1.3680043.8.498.2")
    assert loaded.series_uid == "1.2.826.0.1.3680043.8.498.2"
    assert len(loaded.dicom_files) == 20 and all(f.name.startswith("second") for f in loaded.dicom_files)
    assert_input_error(folder, "is not in folder", series_uid="9.9.9")


def test_dicom_missing_slice(shared_data, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(shared_data / "example_ct_dicom", folder)
    files = read_image(folder).dicom_files
    files[10].unlink()
    error = assert_input_error(folder, "uneven slice spacing")
    assert "2.00 to 4.00 mm" in str(error)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    assert_input_error(tmp_path, "contains no DICOM files")


def test_nonexistent_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG not really")
    assert_input_error(path, "Unsupported input file type")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(path))
    assert_input_error(path, "2D image")


def test_4d_image(tmp_path):
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16, 16, 3], sitk.sitkInt16), str(path))
    assert_input_error(path, "4D image")


def test_rgb_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([16, 16, 16], sitk.sitkVectorUInt8, 3), str(path))
    assert_input_error(path, "vector/RGB")


def test_truncated_nii_gz(shared_data, tmp_path):
    data = (shared_data / "example_ct_sm.nii.gz").read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(path, "is truncated")


def test_truncated_uncompressed_nii(shared_data, tmp_path):
    path = tmp_path / "cut.nii"
    sitk.WriteImage(sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz")), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert_input_error(path, "is truncated")


def test_garbage_nii_gz(tmp_path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_input_error(path, "not gzip-compressed")


def test_text_file_named_nrrd(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("this is a text file\n")
    assert_input_error(path, "not a valid NRRD image")


def test_zero_spacing_file_refused(tmp_path):
    path = tmp_path / "zero.nrrd"
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 10 10 10\n"
        "space directions: (0,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + np.zeros(1000, np.int16).tobytes())
    assert_input_error(path, "spacing")


# ---------------------------------------------------------------- validate_ct


def test_mr_refused_unless_forced(shared_data):
    path = shared_data / "example_mr_sm.nii.gz"
    mr = read_image(path).image
    with pytest.raises(InputError, match="does not look like a CT") as info:
        validate_ct(mr)
    assert "force=True" in str(info.value)
    warnings = validate_ct(mr, force=True)
    assert len(warnings) == 1 and "does not look like a CT" in warnings[0]


def test_refusal_names_the_option_as_the_caller_spells_it():
    not_ct = sitk.Cast(ct_like(), sitk.sitkFloat32) + 1500.0  # no air: values 500..2200
    with pytest.raises(InputError) as info:
        validate_ct(not_ct)
    python_words, cli_words = str(info.value), str(info.value.for_caller("cli"))
    assert "`force=True`" in python_words and "--force" not in python_words
    assert "`--force`" in cli_words and "force=True" not in cli_words
    assert info.value.for_caller("cli").exit_code == info.value.exit_code
    assert type(info.value.for_caller("cli")) is InputError
    plain = InputError("No {placeholder} here {force}.")  # without settings the text stays as written
    assert str(plain.for_caller("cli")) == "No {placeholder} here {force}."


def test_nan_volume():
    image = sitk.Cast(ct_like(), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[3, 4, 5] = np.nan
    bad = sitk.GetImageFromArray(array)
    with pytest.raises(InputError, match="NaN or infinite"):
        validate_ct(bad)


def test_constant_volume():
    image = sitk.GetImageFromArray(np.full((16, 16, 16), -1000, np.int16))
    with pytest.raises(InputError, match="constant"):
        validate_ct(image)


def test_too_small_volume():
    with pytest.raises(InputError, match="too small"):
        validate_ct(ct_like(size=(20, 20, 5)))


@pytest.mark.parametrize("spacing", [(25.0, 1.0, 1.0), (1.0, 1.0, 20.5)])
def test_implausible_spacing(spacing):
    with pytest.raises(InputError, match="spacing"):
        validate_ct(ct_like(spacing=spacing))


def test_oblique_left_handed_direction_accepted():
    image = ct_like()
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    image.SetDirection(rotation.ravel().tolist())
    assert validate_ct(image) == []


# ---------------------------------------------------------------- writing


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_write_temp_name_keeps_format_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "out.segmentation.nii.gz", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].name.startswith(".out.segmentation.nii.gz.tmp-") and seen[0].name.endswith(".nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.segmentation.nii.gz"]


def test_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions")
        with pytest.raises(OutputError, match="not writable"):
            write_json(locked / "x.json", {"a": 1})
        with pytest.raises(OutputError, match="Cannot create output folder"):
            write_json(locked / "sub" / "x.json", {"a": 1})
    finally:
        locked.chmod(0o700)


def test_output_folder_cannot_be_created(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="Cannot create output folder"):
        write_json(blocker / "sub" / "x.json", {"a": 1})
    assert blocker.read_text() == "not a folder"


def test_unwritable_folder_reported_even_as_root(tmp_path, monkeypatch):
    # Root ignores permission bits, so simulate what a normal user would get from os.access.
    monkeypatch.setattr("clnet.io.atomic.os.access", lambda *args, **kwargs: False)
    with pytest.raises(OutputError, match="not writable"):
        write_json(tmp_path / "x.json", {"a": 1})
    assert not list(tmp_path.iterdir())


def test_output_path_is_a_folder(tmp_path):
    with pytest.raises(OutputError, match="is an existing folder"):
        write_json(tmp_path, {"a": 1})


def test_write_json_and_label_image(tmp_path):
    write_json(tmp_path / "meta.json", {"value": np.float32(1.5), "n": np.int64(3)})
    assert (tmp_path / "meta.json").read_text() == '{\n  "value": 1.5,\n  "n": 3\n}\n'
    for suffix, pixel in ((".nii.gz", sitk.sitkUInt8), (".nrrd", sitk.sitkUInt16), (".mha", sitk.sitkUInt8)):
        labels = sitk.Cast(sitk.GetImageFromArray(np.arange(1000).reshape(10, 10, 10) % 7), pixel)
        labels.SetSpacing((1.5, 2.0, 3.0))
        path = tmp_path / f"labels{suffix}"
        write_label_image(labels, path)
        back = sitk.ReadImage(str(path))
        assert back.GetPixelID() == pixel and same_geometry(back, labels)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))
    with pytest.raises(OutputError, match="Unsupported label image extension"):
        write_label_image(labels, tmp_path / "labels.png")


def test_seg_nrrd_header_and_roundtrip(shared_data, tmp_path):
    nrrd = pytest.importorskip("nrrd")
    labels = sitk.ReadImage(str(shared_data / "example_seg.nii.gz"))
    path = tmp_path / "out.seg.nrrd"
    write_seg_nrrd(labels, ANATOMIES, path)
    data, header = nrrd.read(str(path), index_order="C")
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    # Labels 1, 2, 5, 7 are all present in the example segmentation.
    assert [header[f"Segment{i}_LabelValue"] for i in range(4)] == ["1", "2", "5", "7"]
    assert "Segment4_ID" not in header
    assert header["Segment1_ID"] == "kidney_right" and header["Segment1_Name"] == "Right kidney"
    assert header["Segment1_Layer"] == "0"
    assert header["Segment1_Tags"].startswith("TerminologyEntry:Segmentation category and type")
    assert header["Segment1_Tags"].endswith("|") and "SCT^24028007^Right" in header["Segment1_Tags"]
    # An anatomy without a SNOMED-CT code gets clnet's private code, as in the Slicer terminology file.
    assert header["Segment2_Tags"].endswith("~SCT^123037004^Anatomical Structure~99CLNET^liver^Liver~^^"
                                            "~Anatomic codes - DICOM master list~^^~^^|")
    assert np.allclose(
        [float(v) for v in header["Segment0_Color"].split()], np.array([157, 108, 162]) / 255, atol=1e-5
    )
    array = sitk.GetArrayFromImage(labels)
    zs, ys, xs = np.nonzero(array == 2)
    expected_extent = [xs.min(), xs.max(), ys.min(), ys.max(), zs.min(), zs.max()]
    assert [int(v) for v in header["Segment1_Extent"].split()] == expected_extent
    np.testing.assert_array_equal(data, array)
    back = sitk.ReadImage(str(path))
    assert same_geometry(back, labels)
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(header["space directions"], (direction * labels.GetSpacing()).T, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], labels.GetOrigin(), atol=1e-5)


def test_dicom_seg_roundtrip(shared_data, tmp_path):
    hd = pytest.importorskip("highdicom")
    series = read_image(shared_data / "example_ct_dicom")
    before = tree_hash(shared_data / "example_ct_dicom")
    array = np.zeros((20, 512, 512), np.uint8)
    array[2:8, 100:200, 120:220] = 2
    array[5:15, 300:350, 250:400] = 5
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(series.image)
    path = tmp_path / "seg.dcm"
    warnings = write_dicom_seg(labels, series.dicom_files, ANATOMIES, path)
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 2
    assert str(seg.ContentCreatorName) == "CLNet^automatic"
    # The example series has no Study/Series UIDs: the SEG references invented ones, and says so.
    assert len(warnings) == 2 and all("invented" in w and "PACS" in w for w in warnings)
    assert {w.split()[4] for w in warnings} == {"StudyInstanceUID", "SeriesInstanceUID"}
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Right kidney", "Liver"]
    kidney = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
    # Frames are stored per segment and source slice; check one against the input mask.
    source_uid = seg.get_source_image_uids()[4][2]
    volume = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[1, 2], combine_segments=True, relabel=True
    )
    np.testing.assert_array_equal(volume[0], np.where(array[4] == 2, 1, np.where(array[4] == 5, 2, 0)))
    assert tree_hash(shared_data / "example_ct_dicom") == before


def test_dicom_seg_rejects_wrong_grid(shared_data, tmp_path):
    pytest.importorskip("highdicom")
    series = read_image(shared_data / "example_ct_dicom")
    labels = sitk.Image(512, 512, 10, sitk.sitkUInt8)
    with pytest.raises(InputError, match="slices"):
        write_dicom_seg(labels, series.dicom_files, ANATOMIES, tmp_path / "seg.dcm")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- statistics, preview, Dice


def test_statistics_known_values(tmp_path):
    labels = np.zeros((10, 10, 10), np.uint8)
    ct = np.full((10, 10, 10), -1000, np.int16)
    labels[0:2, 0:5, 0:5] = 1  # 50 voxels, values 10 and 30
    ct[0:2, 0:5, 0:5] = 10
    ct[1, 0:5, 0:5] = 30
    labels[5:9, 5:9, 5:9] = 5  # 64 voxels at 40 HU
    ct[5:9, 5:9, 5:9] = 40
    labels[9, 9, 9] = 9  # present but not in the catalog: no row
    rows = anatomy_statistics(labels, ct, (0.5, 1.0, 2.0), ANATOMIES)
    assert [r["label"] for r in rows] == [1, 5]
    spleen, liver = rows
    assert spleen["voxels"] == 50 and spleen["volume_ml"] == pytest.approx(0.05)
    assert spleen["mean_hu"] == pytest.approx(20.0) and spleen["std_hu"] == pytest.approx(10.0)
    assert (spleen["min_hu"], spleen["max_hu"]) == (10.0, 30.0)
    assert liver["voxels"] == 64 and liver["mean_hu"] == 40.0 and liver["std_hu"] == 0.0
    assert liver["region"] == "abdomen" and liver["display_name"] == "Liver"
    path = tmp_path / "stats.csv"
    write_statistics_csv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "label,name,display_name,region,voxels,volume_ml,mean_hu,std_hu,min_hu,max_hu"
    assert lines[1].startswith("1,spleen,Spleen,abdomen,50,0.05,20.0,10.0,10.0,30.0")
    assert len(lines) == 3


def test_preview_png(shared_data, tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    ct = sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz"))
    labels = sitk.ReadImage(str(shared_data / "example_seg.nii.gz"))
    path = tmp_path / "preview.png"
    write_preview_png(ct, labels, ANATOMIES, path)
    with image_module.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        width, height = png.size
        pixels = np.asarray(png)
    # 30 slices of 3 mm (90 mm) under a 366 mm wide body: three axial panels, not a thin coronal strip.
    assert width > 3 * 400 and 300 < height < width
    coloured = np.abs(pixels[..., 0].astype(int) - pixels[..., 1]) > 20
    assert coloured.any(), "label overlay should tint some pixels"


def test_dice_identical_and_shifted():
    array = np.zeros((12, 12, 12), np.uint8)
    array[2:6, 2:6, 2:6] = 1
    array[7:11, 7:11, 7:11] = 3
    ref = sitk.GetImageFromArray(array)
    assert dice_per_label(ref, ref) == {1: 1.0, 3: 1.0}
    shifted_array = np.zeros_like(array)
    shifted_array[2:6, 2:6, 3:7] = 1  # overlap 3/4 of each 4^3 cube
    shifted_array[0, 0, 0] = 4
    shifted = sitk.GetImageFromArray(shifted_array)
    dice = dice_per_label(shifted, ref)
    assert dice == {1: pytest.approx(0.75), 3: 0.0, 4: 0.0}
    assert dice_per_label(shifted, ref, labels=[1, 2]) == {1: pytest.approx(0.75)}


def test_dice_geometry_mismatch():
    ref = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.uint8))
    pred = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.uint8))
    pred.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="spacing"):
        dice_per_label(pred, ref)
