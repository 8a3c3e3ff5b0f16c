"""``clnet evaluate``: surface distances on hand-computable shapes, label maps by name, and the demo's Dice."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.catalog import load_catalog
from clnet.errors import InputError
from clnet.io.evaluate import surface_distances
from clnet.io.evaluate_report import evaluate_files, format_report, read_label_map

# ---------------------------------------------------------------- surface distances


def test_two_single_voxels_are_their_distance_apart():
    a, b = np.zeros((5, 5, 9), bool), np.zeros((5, 5, 9), bool)
    a[2, 2, 1], b[2, 2, 4] = True, True
    assert surface_distances(a, b, (1.0, 1.0, 2.0)) == (6.0, 6.0)  # 3 voxels of 2 mm along x


def test_parallel_plates_shifted_along_z():
    """Two one-voxel-thick plates (every voxel is surface), the same in x and y, 4 slices of 2.5 mm apart."""
    a, b = np.zeros((12, 10, 10), bool), np.zeros((12, 10, 10), bool)
    a[3, 2:8, 2:8], b[7, 2:8, 2:8] = True, True
    hd95, msd = surface_distances(a, b, (2.5, 0.8, 0.8))
    assert hd95 == pytest.approx(10.0) and msd == pytest.approx(10.0)


def test_a_longer_plate_gives_the_hand_computed_distances():
    """Plate A spans x 0..9, plate B x 0..4, both at y 0, z 0 and 3 (spacing z 2 mm, x 1 mm)."""
    a, b = np.zeros((4, 1, 10), bool), np.zeros((4, 1, 10), bool)
    a[0, 0, :] = True
    b[3, 0, :5] = True
    # A → B: x 0..4 lie 6 mm under B; x 5..9 reach B's end at x 4: sqrt((x-4)^2 + 6^2). B → A: 6 mm each.
    forward = [6.0] * 5 + [np.hypot(x - 4, 6.0) for x in range(5, 10)]
    backward = [6.0] * 5
    hd95, msd = surface_distances(a, b, (2.0, 1.0, 1.0))
    assert hd95 == pytest.approx(max(np.percentile(forward, 95), np.percentile(backward, 95)))
    assert msd == pytest.approx(np.mean(forward + backward))


def test_identical_empty_and_one_sided_masks():
    box = np.zeros((8, 8, 8), bool)
    box[2:6, 1:7, 3:5] = True
    assert surface_distances(box, box, (1.0, 2.0, 3.0)) == (0.0, 0.0)
    assert surface_distances(box, np.zeros_like(box), (1, 1, 1)) is None
    assert surface_distances(np.zeros_like(box), np.zeros_like(box), (1, 1, 1)) is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_shifted_boxes_match_monai_on_anisotropic_spacing():
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    a, b = np.zeros((20, 24, 28), bool), np.zeros((20, 24, 28), bool)
    a[4:12, 5:15, 6:20] = True
    b[6:15, 7:16, 4:18] = True
    b[1, 1, 1] = True  # a stray voxel far away: the 95th percentile must not be the maximum
    spacing = (2.5, 0.7, 1.1)
    hd95, msd = surface_distances(a, b, spacing)
    ta, tb = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b))
    assert hd95 == pytest.approx(metrics.compute_hausdorff_distance(ta, tb, percentile=95, spacing=spacing).item(),
                                 rel=1e-5)
    assert msd == pytest.approx(
        metrics.compute_average_surface_distance(ta, tb, symmetric=True, spacing=spacing).item(), rel=1e-5)


# ---------------------------------------------------------------- label maps by name


def _write(array: np.ndarray, path, spacing=(1.5, 1.5, 3.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def pair(tmp_path):
    """A clnet-style prediction (catalog values + segmentation.json) and a TotalSegmentator-style reference."""
    catalog = load_catalog()
    liver, spleen, kidney, lung = (catalog.by_name(n) for n in ("Liver", "Spleen", "Kidney_L", "Lung_LUL"))
    pred = np.zeros((10, 20, 20), np.uint8)
    pred[2:6, 2:10, 2:10] = liver.label
    pred[7:9, 12:16, 12:16] = kidney.label  # the reference has no kidney here: Dice 0, no distance
    ref = np.zeros_like(pred)
    ref[2:6, 2:10, 4:12] = 5  # TotalSegmentator's liver, shifted 2 voxels in x
    ref[7:9, 2:4, 12:16] = 10  # lung_upper_lobe_left: the prediction could not hold it
    ref[0, 0, 0] = 17  # thyroid_gland: no catalog anatomy
    out = tmp_path / "pred"
    out.mkdir()
    _write(pred, out / "segmentation.nii.gz")
    _write(ref, tmp_path / "ref.nii.gz")
    labels = {str(a.label): {"name": a.name} for a in (liver, spleen, kidney)}  # spleen requested, absent
    (out / "segmentation.json").write_text(json.dumps({"labels": labels}))
    (tmp_path / "ts.json").write_text(json.dumps({"1": "spleen", "3": "kidney_left", "5": "liver",
                                                  "10": "lung_upper_lobe_left", "17": "thyroid_gland"}))
    return out / "segmentation.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "ts.json", lung


def test_reference_names_are_matched_through_the_catalog(pair):
    pred, ref, ts, lung = pair
    report = evaluate_files(pred, ref, reference_labels=ts)
    rows = {r["name"]: r for r in report.rows}
    assert set(rows) == {"Liver", "Kidney_L"}
    assert rows["Liver"]["dice"] == pytest.approx(0.75)  # 8 columns, 6 shared
    assert rows["Liver"]["hd95_mm"] == pytest.approx(3.0) and rows["Liver"]["msd_mm"] > 0
    assert rows["Kidney_L"]["dice"] == 0.0 and rows["Kidney_L"]["hd95_mm"] is None
    assert report.absent_from_both == ["Spleen"]
    assert report.not_in_prediction_map == [lung.name]
    assert report.unknown_reference_labels == {17: "thyroid_gland"}
    assert report.mean("dice") == (pytest.approx(0.375), 2)
    assert report.mean("hd95_mm") == (pytest.approx(3.0), 1)


def test_report_formats(pair):
    pred, ref, ts, _ = pair
    report = evaluate_files(pred, ref, reference_labels=ts)
    table = format_report(report, "table")
    assert "mean Dice 0.3750 over 2 anatomies" in table and "thyroid_gland" in table
    lines = format_report(report, "csv").splitlines()
    assert lines[0] == "label,name,dice,hd95_mm,msd_mm,prediction_voxels,reference_voxels"
    assert len(lines) == 3 and any(line.endswith("Kidney_L,0.0,,,32,0") for line in lines)
    data = json.loads(format_report(report, "json"))
    assert data["mean"]["dice"] == 0.375 and data["mean"]["n_hd95_mm"] == 1
    assert data["absent_from_both"] == ["Spleen"]


def test_without_maps_values_are_catalog_labels(pair, tmp_path):
    pred, _, _, _ = pair
    report = evaluate_files(pred, pred)  # the segmentation.json beside it names the prediction's values
    assert [(r["name"], r["dice"]) for r in report.rows] == [("Kidney_L", 1.0), ("Liver", 1.0)]
    assert report.absent_from_both == ["Spleen"] and report.prediction_labels.endswith("segmentation.json")
    bare = tmp_path / "bare.nii.gz"
    bare.write_bytes(pred.read_bytes())
    plain = evaluate_files(bare, bare)  # no map anywhere: catalog values on both sides
    assert [r["name"] for r in plain.rows] == ["Kidney_L", "Liver"] and plain.absent_from_both == []


def test_bad_label_maps_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_label_map(bad)
    bad.write_text(json.dumps({"liver": 5}))
    with pytest.raises(InputError, match="not a label value"):
        read_label_map(bad)


def test_cli_json_alias_and_format_flag(pair):
    pred, ref, ts, _ = pair
    runs = [subprocess.run([sys.executable, "-m", "clnet", "evaluate", str(pred), str(ref), "--reference-labels",
                            str(ts), *flag], capture_output=True, text=True, timeout=300)
            for flag in (["--json"], ["--format", "json"], ["--format", "csv"])]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout)
    assert runs[2].stdout.startswith("label,name,dice")


# ---------------------------------------------------------------- the model card's figure


def test_demo_model_card_mean_dice_is_reproduced(example_ct, shared_data, tmp_path):
    """``clnet segment --example`` + ``clnet evaluate`` against TotalSegmentator's map give the card's 0.215."""
    out = tmp_path / "demo"
    seg = subprocess.run([sys.executable, "-m", "clnet", "segment", "--example", "-o", str(out), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert seg.returncode == 0, seg.stderr
    proc = subprocess.run([sys.executable, "-m", "clnet", "evaluate", str(out / "segmentation.nii.gz"),
                           str(shared_data / "example_seg_fast_force_split.nii.gz"), "--reference-labels",
                           str(shared_data / "labels.json"), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mean"]["n_dice"] == 58  # the demo's anatomies; the three lung lobes it lacks are listed apart
    assert report["mean"]["dice"] == pytest.approx(0.2151, abs=0.002)
    assert report["not_in_prediction_map"] == ["Lung_LUL", "Lung_LLL", "Lung_RLL"]
    dice = {r["name"]: r["dice"] for r in report["anatomies"]}
    assert dice["Musc_GluteusMax_R"] == pytest.approx(0.854, abs=0.01) and dice["Liver"] == 0.0
