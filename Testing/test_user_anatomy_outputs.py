"""User-defined anatomies (labels 1000+) and uncoded catalog anatomies in every output format (issue 19).

Most tests write one hand-made :class:`SegmentationResult` (known boxes, so every assertion is exact)
on a small DICOM series made from 8 slices of the real example CT; one test runs the real pipeline
with a random-weight model that owns a user anatomy.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.catalog import load_catalog
from clnet.catalog.user import catalog_for, from_label_entry, new_user_anatomy, parse_code, user_anatomies
from clnet.errors import ClnetError
from clnet.inference.segmenter import SegmentationResult
from clnet.io.read import LoadedImage, read_image
from clnet.outputs import save_result

PAINTED = "Painted spine"  # no code of its own: private 99CLNETU code
KIDNEY = "My kidney (mine)"  # with a SNOMED-CT code
UNCODED = "Epiglottis"  # a catalog anatomy without a SNOMED-CT code: private 99CLNET code
CODED = "Liver"
GREEN, ORANGE = (10, 200, 30), (250, 120, 0)
ALL_FORMATS = ("nifti", "seg.nrrd", "masks", "dicom-seg")


def _user_entries() -> list[dict]:
    first = new_user_anatomy(PAINTED, [], "mine", GREEN)
    return [first, new_user_anatomy(KIDNEY, [first], "mine", ORANGE, "SCT^64033007^Kidney")]


def _overlay(entries: list[dict]):
    """The catalog as a model with these ``user_anatomies`` sees it (catalog_for reads only that field)."""
    return catalog_for(SimpleNamespace(user_anatomies=entries))


@pytest.fixture(scope="module")
def catalog():
    return _overlay(_user_entries())


@pytest.fixture(scope="module")
def dicom_ct(example_ct: Path, tmp_path_factory) -> Path:
    """8 axial slices of the real example CT written as a DICOM CT series (all UIDs filled)."""
    import pydicom

    image = sitk.Cast(sitk.ReadImage(str(example_ct))[:, :, 60:68], sitk.sitkInt16)
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    folder.mkdir()
    uids = {tag: pydicom.uid.generate_uid() for tag in ("0020|000d", "0020|000e", "0020|0052")}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {**uids, "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": pydicom.uid.generate_uid(), "0020|0013": str(k + 1), "0010|0020": "USER-OUT",
                "0020|0032": "\\".join(f"{v:.4f}" for v in position), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
                "0018|0050": str(image.GetSpacing()[2]), "0028|1052": "0", "0028|1053": "1"}
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    return folder


@pytest.fixture(scope="module")
def source(dicom_ct: Path) -> LoadedImage:
    return read_image(dicom_ct)


def _labels(source: LoadedImage, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(source.image).shape, np.uint16)
    for value, box in boxes.items():
        array[box] = value
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(source.image)
    return image


BOXES = {  # (z, y, x) boxes on the 8 × 101 × 122 grid; label 1001 (KIDNEY) is requested but absent
    42: (slice(0, 3), slice(10, 20), slice(10, 30)),
    86: (slice(2, 6), slice(40, 60), slice(20, 50)),
    1000: (slice(1, 8), slice(70, 90), slice(60, 80)),
}


def _result(catalog, labels: sitk.Image, names=(UNCODED, CODED, PAINTED, KIDNEY)) -> SegmentationResult:
    requested = [catalog.by_name(n) for n in names]
    present_values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    return SegmentationResult(labels, requested, [a for a in requested if a.label in present_values],
                              settings={"model": "hand-made"})


@pytest.fixture(scope="module")
def written(catalog, source: LoadedImage, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("highdicom")
    result = _result(catalog, _labels(source, BOXES))
    return save_result(result, tmp_path_factory.mktemp("out"), source, formats=ALL_FORMATS, stats=True,
                       preview=True)


def test_catalog_overlay_holds_the_user_anatomies(catalog) -> None:
    painted, kidney = catalog.by_name(PAINTED), catalog.by_name(KIDNEY)
    assert (painted.label, kidney.label) == (1000, 1001)
    assert painted.region == kidney.region == "My anatomies" and painted.color == GREEN
    assert load_catalog().get(PAINTED) is None  # the packaged catalog is untouched


def test_nifti_is_uint16_with_the_user_label(written, source) -> None:
    back = sitk.ReadImage(str(written["nifti"]))
    assert back.GetPixelID() == sitk.sitkUInt16
    array = sitk.GetArrayFromImage(back)
    assert set(np.unique(array)) == {0, 42, 86, 1000}
    assert int((array == 1000).sum()) == 7 * 20 * 20
    assert np.array_equal(array, sitk.GetArrayFromImage(_labels(source, BOXES)))


def test_seg_nrrd_carries_names_colours_and_terminology(written) -> None:
    nrrd = pytest.importorskip("nrrd")
    data, header = nrrd.read(str(written["seg.nrrd"]), index_order="C")
    assert data.dtype == np.uint16 and int((data == 1000).sum()) == 7 * 20 * 20
    segments = {header[f"Segment{i}_LabelValue"]: i for i in range(3)}
    assert list(segments) == ["42", "86", "1000"] and "Segment3_ID" not in header
    user = f"Segment{segments['1000']}_"
    assert header[user + "Name"] == PAINTED and header[user + "ID"] == PAINTED
    assert np.allclose([float(c) for c in header[user + "Color"].split()], np.array(GREEN) / 255, atol=1e-5)
    assert header[user + "Extent"] == "60 79 70 89 1 7"
    assert header[user + "Tags"] == (
        "TerminologyEntry:Segmentation category and type - CLNet Segmentation~SCT^123037004^Anatomical Structure"
        "~99CLNETU^user-1000^Painted spine~^^~Anatomic codes - DICOM master list~^^~^^|")
    # The uncoded catalog anatomy carries the same private code as Slicer's terminology file.
    uncoded = header[f"Segment{segments['42']}_Tags"]
    assert "~99CLNET^Epiglottis^Epiglottis~" in uncoded
    term = json.loads(load_catalog_term_file())
    types = [t for c in term["SegmentationCodes"]["Category"] for t in c["Type"]]
    assert any(t["CodingSchemeDesignator"] == "99CLNET" and t["CodeValue"] == "Epiglottis" for t in types)
    assert "SCT^10200004^Liver" in header[f"Segment{segments['86']}_Tags"]


def load_catalog_term_file() -> str:
    from clnet.catalog.terminology import TERMINOLOGY_FILE

    return TERMINOLOGY_FILE.read_text(encoding="utf-8")


def test_dicom_seg_has_user_and_private_codes(written, source) -> None:
    hd = pytest.importorskip("highdicom")
    seg = hd.seg.segread(str(written["dicom-seg"]))
    assert seg.number_of_segments == 3
    items = list(seg.SegmentSequence)
    assert [int(d.SegmentNumber) for d in items] == [1, 2, 3]
    assert [d.SegmentLabel for d in items] == [UNCODED, CODED, PAINTED]
    assert [d.TrackingID for d in items] == [UNCODED, CODED, PAINTED]
    uncoded, user = items[0].SegmentedPropertyTypeCodeSequence[0], items[2].SegmentedPropertyTypeCodeSequence[0]
    assert (uncoded.CodingSchemeDesignator, uncoded.CodeValue, uncoded.CodeMeaning) == (
        "99CLNET", "Epiglottis", "Epiglottis")
    assert (user.CodingSchemeDesignator, user.CodeValue, user.CodeMeaning) == ("99CLNETU", "user-1000", PAINTED)
    category = items[2].SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
    assert items[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert list(items[2].RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(*GREEN).value)
    assert {s.CodingSchemeDesignator for s in seg.CodingSchemeIdentificationSequence} == {"99CLNET", "99CLNETU"}
    # Pixels: segment number n stands for the n-th label present (42 → 1, 86 → 2, 1000 → 3).
    expected = np.zeros(sitk.GetArrayViewFromImage(source.image).shape, np.uint8)
    for number, value in enumerate(BOXES, start=1):
        expected[BOXES[value]] = number
    for k in (0, 2, 7):
        uid = str(read_sop_uid(source.dicom_files[k]))
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2, 3],
                                                  combine_segments=True, relabel=True)
        np.testing.assert_array_equal(frame[0], expected[k])


def read_sop_uid(path: Path) -> str:
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID


def test_dicom_seg_with_a_coded_user_anatomy_and_labels_up_to_2047(catalog, source, tmp_path) -> None:
    hd = pytest.importorskip("highdicom")
    last = new_user_anatomy("Last one", [{"name": f"u{v}", "label": v} for v in range(1000, 2047)], "mine")
    assert last["label"] == 2047
    wide = _overlay([*_user_entries(), last])
    labels = _labels(source, {1001: BOXES[86], 2047: BOXES[1000]})
    result = _result(wide, labels, names=(KIDNEY, "Last one"))
    out = save_result(result, tmp_path, source, formats=("dicom-seg",))
    seg = hd.seg.segread(str(out["dicom-seg"]))
    kidney, last_item = seg.SegmentSequence
    code = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning) == ("SCT", "64033007", "Kidney")
    assert last_item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "user-2047"
    assert list(kidney.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(*ORANGE).value)
    # Only the user scheme is private here.
    assert [s.CodingSchemeDesignator for s in seg.CodingSchemeIdentificationSequence] == ["99CLNETU"]


def test_masks_statistics_and_json_name_user_anatomies(written) -> None:
    masks = sorted(p.name for p in written["masks"].iterdir())
    assert masks == ["Epiglottis.nii.gz", "Liver.nii.gz", "My_kidney_mine.nii.gz", "Painted_spine.nii.gz"]
    painted = sitk.ReadImage(str(written["masks"] / "Painted_spine.nii.gz"))
    assert painted.GetPixelID() == sitk.sitkUInt8 and int(sitk.GetArrayViewFromImage(painted).sum()) == 2800
    assert not sitk.GetArrayViewFromImage(sitk.ReadImage(str(written["masks"] / "My_kidney_mine.nii.gz"))).any()
    stats = json.loads(written["stats_json"].read_text())
    assert stats["Painted_spine"]["volume"] == pytest.approx(2800 * 27.0)
    assert stats["My_kidney_mine"] == {"volume": 0.0, "intensity": 0.0}
    rows = {r["label"]: r for r in csv.DictReader(written["stats"].open())}
    assert rows["1000"]["name"] == PAINTED and rows["1000"]["region"] == "My anatomies"
    labels = json.loads(written["json"].read_text())["labels"]
    assert list(labels) == ["42", "86", "1000", "1001"]
    assert labels["1000"]["name"] == PAINTED and labels["1000"]["mask"] == "masks/Painted_spine.nii.gz"
    assert labels["1001"]["present"] is False and labels["1001"]["source"] == "user"
    assert labels["1001"]["terminology"]["type"]["value"] == "64033007"


def test_label_entries_give_back_the_user_anatomies(written, catalog) -> None:
    """A reader without the model (evaluate, the Slicer import) rebuilds each user anatomy exactly."""
    labels = json.loads(written["json"].read_text())["labels"]
    assert from_label_entry(labels["1000"]) == catalog.by_name(PAINTED)
    assert from_label_entry(labels["1001"]) == catalog.by_name(KIDNEY)
    assert from_label_entry(labels["42"]) is None and from_label_entry({"source": "user"}) is None


def test_preview_legend_shows_the_user_colour(written) -> None:
    from PIL import Image

    rgb = np.asarray(Image.open(written["preview"]).convert("RGB"))
    # The legend swatch is drawn in the anatomy's exact colour; the overlay blends it with the CT.
    assert int(np.all(rgb == GREEN, axis=-1).sum()) >= 100


def test_evaluate_scores_user_anatomies_by_name(written, source, tmp_path) -> None:
    from clnet.io.evaluate_report import evaluate_files

    moved = dict(BOXES)
    moved[1000] = (slice(1, 8), slice(75, 95), slice(60, 80))  # shifted 5 voxels: overlap 15 of 20 rows
    reference = tmp_path / "reference.nii.gz"
    sitk.WriteImage(_labels(source, moved), str(reference))
    expected = 2 * 15 / 40
    # Reference values read as catalog labels plus the prediction's user anatomies.
    report = evaluate_files(written["nifti"], reference, distances=False)
    rows = {r["name"]: r for r in report.rows}
    assert rows[PAINTED]["label"] == 1000 and rows[PAINTED]["dice"] == pytest.approx(expected, abs=1e-4)
    assert rows[UNCODED]["dice"] == 1.0 and not report.unknown_prediction_labels
    # A {"value": "name"} map that names the user anatomy with another value and another case.
    relabelled = tmp_path / "relabelled.nii.gz"
    array = sitk.GetArrayFromImage(_labels(source, moved))
    array[array == 1000] = 7
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(source.image)
    sitk.WriteImage(image, str(relabelled))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"7": PAINTED.upper(), "86": "liver"}))
    report = evaluate_files(written["nifti"], relabelled, reference_labels=names, distances=False)
    rows = {r["name"]: r for r in report.rows}
    assert set(rows) == {PAINTED, CODED} and rows[PAINTED]["dice"] == pytest.approx(expected, abs=1e-4)


def test_clashing_file_names_are_refused(catalog, source, tmp_path) -> None:
    with pytest.raises(ClnetError, match="same mask file"):
        new_user_anatomy("painted  SPINE", _user_entries(), "mine")
    twin = {"name": "Painted_spine", "label": 1005, "color": [1, 2, 3], "decoder": "other", "code": None}
    result = _result(_overlay([*_user_entries(), twin]), _labels(source, BOXES), names=(PAINTED, "Painted_spine"))
    out = tmp_path / "out"
    with pytest.raises(ClnetError, match="masks/Painted_spine.nii.gz"):
        save_result(result, out, source, formats=("nifti", "masks"))
    assert not out.exists()
    save_result(result, out, source, formats=("nifti",))  # no masks, no clash


@pytest.mark.parametrize("text", ["SCT^1^a~b", "SCT^1^a|b", "SCT^1^" + "x" * 65])
def test_codes_that_break_outputs_are_refused(text: str) -> None:
    with pytest.raises(ClnetError, match="cannot be written"):
        parse_code(text)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    """A random-weight model whose one decoder outputs a user anatomy, an uncoded and a coded one."""
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder

    prep = Preprocessing(spacing_zyx=(3.0, 3.0, 3.0), fast_spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(16, 32, 32),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0), overlap=0.25)
    [painted, _] = _user_entries()
    manifest = build_manifest("tiny-user", tiny_encoder(), {"mine": [PAINTED, UNCODED, CODED]}, prep,
                              user_anatomies=[painted], description="random weights for tests")
    return save_random_model(tmp_path_factory.mktemp("models") / "user", manifest, seed=1)


def test_segment_cli_writes_every_format_with_the_user_anatomy(user_model: Path, dicom_ct: Path,
                                                               tmp_path: Path) -> None:
    """The real pipeline (random weights, so which labels appear is arbitrary): outputs agree with each other."""
    pytest.importorskip("highdicom")
    nrrd = pytest.importorskip("nrrd")
    assert [a.name for a in user_anatomies(_load_manifest(user_model))] == [PAINTED]
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "clnet", "segment", str(dicom_ct), "-o", str(out), "--model",
                    str(user_model), "--device", "cpu", "--fast", "--anatomies", PAINTED, UNCODED, CODED, "--formats",
                    *ALL_FORMATS, "--stats", "-q"], check=True, capture_output=True, text=True)
    labels = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    assert labels.GetPixelID() == sitk.sitkUInt16  # a label ≥ 1000 can be written, present or not
    array = sitk.GetArrayFromImage(labels)
    info = json.loads((out / "segmentation.json").read_text())["labels"]
    assert info["1000"]["name"] == PAINTED and info["1000"]["region"] == "My anatomies"
    present = sorted(int(k) for k, v in info.items() if v["present"])
    assert present == sorted(set(np.unique(array).tolist()) - {0})
    assert (out / "masks" / "Painted_spine.nii.gz").is_file()
    data, header = nrrd.read(str(out / "segmentation.seg.nrrd"), index_order="C")
    assert np.array_equal(data, array)
    assert [int(header[f"Segment{i}_LabelValue"]) for i in range(len(present))] == present
    assert all(header[f"Segment{i}_Tags"].startswith("TerminologyEntry:") for i in range(len(present)))


def _load_manifest(model: Path):
    from clnet.checkpoint import load_model

    return load_model(model).manifest
