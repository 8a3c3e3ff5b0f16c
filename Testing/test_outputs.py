"""Outputs a person (or TotalSegmentator's habits) expects: NIfTI header codes, statistics.json,
the preview's layout and legend, DICOM-SEG warnings in segmentation.json."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.catalog import load_catalog
from clnet.io import statistics_json, write_label_image, write_preview_png
from clnet.io.nifti_header import read_xform_codes, set_xform_codes


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii"])
def test_label_maps_carry_the_input_xform_codes(tmp_path, name):
    labels = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6))
    labels.SetSpacing((0.8, 0.9, 2.5))
    labels.SetOrigin((-10.0, 4.0, 7.5))
    path = tmp_path / name
    write_label_image(labels, path)
    assert read_xform_codes(path) == (1, 1)  # what ITK writes on its own
    write_label_image(labels, path, xform_codes=(0, 2))
    assert read_xform_codes(path) == (0, 2)
    back = sitk.ReadImage(str(path))  # sform 2 alone still gives the same geometry and voxels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    assert back.GetOrigin() == pytest.approx(labels.GetOrigin()) and back.GetSpacing() == pytest.approx((0.8, 0.9, 2.5))
    assert not [p for p in tmp_path.iterdir() if p.name != name]  # no temp files left


def test_xform_codes_of_the_bundled_ct_and_a_rewritten_copy(example_ct, tmp_path):
    assert read_xform_codes(example_ct) == (0, 2)
    copy = tmp_path / "ct.nii.gz"
    copy.write_bytes(example_ct.read_bytes())
    set_xform_codes(copy, (1, 3))
    assert read_xform_codes(copy) == (1, 3)
    with gzip.open(copy) as a, gzip.open(example_ct) as b:
        fa, fb = a.read(), b.read()
    assert fa[:252] == fb[:252] and fa[256:] == fb[256:]  # only the two codes changed
    assert read_xform_codes(tmp_path / "missing.nii.gz") is None


def test_statistics_json_has_totalsegmentator_layout():
    catalog = load_catalog()
    liver, spleen = catalog.by_name("Liver"), catalog.by_name("Spleen")
    rows = [{"label": liver.label, "volume_mm3": 1500.0, "mean_hu": 55.5}]
    stats = statistics_json(rows, [spleen, liver], key=lambda a: a.name_in("totalsegmentator"))
    assert stats == {"spleen": {"volume": 0.0, "intensity": 0.0}, "liver": {"volume": 1500.0, "intensity": 55.5}}
    assert list(stats) == ["spleen", "liver"]  # catalog label order


def _labels_like(ct: sitk.Image, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for value, box in boxes.items():
        array[box] = value
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(ct)
    return labels


@pytest.mark.parametrize("slices, panels", [(slice(0, 112), 2), (slice(40, 60), 3)])
def test_preview_layout_and_legend(example_ct, tmp_path, slices, panels):
    """The whole CT gets axial + coronal; a 20-slice series gets three axial panels instead of a strip."""
    image_module = pytest.importorskip("PIL.Image")
    catalog = load_catalog()
    liver, kidney = catalog.by_name("Liver"), catalog.by_name("Kidney_L")
    ct = sitk.ReadImage(str(example_ct))[:, :, slices]
    nz = ct.GetSize()[2]
    labels = _labels_like(ct, {liver.label: (slice(0, nz), slice(30, 60), slice(20, 50)),
                               kidney.label: (slice(nz // 3, nz), slice(40, 55), slice(80, 95))})
    path = tmp_path / "preview.png"
    write_preview_png(ct, labels, [liver, kidney], path)
    with image_module.open(path) as png:
        width, height = png.size
        pixels = np.asarray(png).astype(int)
    assert height >= 400 and width <= 1700 and height < width  # one readable image, never a thin strip
    # Panels sit side by side: count the runs of columns that show a body (more than text high).
    body_columns = ((pixels[60:height - 100].max(axis=2) > 30).sum(axis=0) > 60).astype(int)
    assert int(np.sum(np.diff(body_columns) == 1) + body_columns[0]) == panels
    # The legend shows both colours as swatches below the panels.
    legend = pixels[height - 80:]
    for color in (liver.color, kidney.color):
        assert (np.abs(legend - np.array(color)).sum(axis=2) == 0).sum() > 50, color


def test_dicom_seg_warning_reaches_segmentation_json(tiny_model_dir, shared_data, tmp_path):
    pytest.importorskip("highdicom")
    import subprocess
    import sys

    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "clnet", "segment", str(shared_data / "example_ct_dicom"), "-o",
                           str(out), "--model", str(tiny_model_dir), "--fast", "--formats", "dicom-seg", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "invented" in proc.stderr and "warning:" in proc.stderr
    warnings = json.loads((out / "segmentation.json").read_text())["warnings"]
    assert sum("PACS cannot link" in w for w in warnings) == 2
