"""Body-part regression: scores, calibration, geometry, model files, ranges and the CLI."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.bodypart import (
    DEFAULT_WEIGHTS,
    LANDMARK_SCORES,
    BodyPartModel,
    anatomy_ranges,
    clean_scores,
    decoder_range,
    landmarks_from_labels,
    load_default,
    score_world_z,
    slices_in_window,
    train_bodypart,
)
from clnet.checkpoint import sha256_file
from clnet.errors import InputError, ModelError

SEG = "example_seg_fast_force_split.nii.gz"


@pytest.fixture(scope="module")
def model() -> BodyPartModel:
    return load_default()


@pytest.fixture(scope="module")
def ct(example_ct: Path) -> sitk.Image:
    return sitk.ReadImage(str(example_ct))


@pytest.fixture(scope="module")
def seg(shared_data: Path) -> tuple[sitk.Image, dict[str, int]]:
    names = {n: int(v) for v, n in json.loads((shared_data / "labels.json").read_text()).items()}
    return sitk.ReadImage(str(shared_data / SEG)), names


@pytest.fixture(scope="module")
def scores(model: BodyPartModel, ct: sitk.Image) -> np.ndarray:
    return model.score_slices(ct)


def test_bundled_model_describes_its_training(model: BodyPartModel) -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert model.info["trained_on"][0]["file"] == "example_ct.nii.gz"
    assert model.info["calibrated"] is True


def test_scores_monotone_finite_and_fast(model: BodyPartModel, ct: sitk.Image, scores: np.ndarray) -> None:
    assert scores.shape == (ct.GetSize()[2],)
    assert np.isfinite(scores).all()
    assert np.all(np.diff(scores) >= 0)
    # 336 mm of body at ~0.12 units/mm: about 40 units from the femurs to T11.
    assert 30 < scores[-1] - scores[0] < 50
    details = model.score_details(ct)
    assert details.reliable and 0.8 < details.slope_ratio < 1.25
    t0 = time.perf_counter()
    model.score_slices(ct)
    assert time.perf_counter() - t0 < 3.0  # ~0.1-0.3 s when the machine is not busy


def test_calibrated_landmarks(model: BodyPartModel, ct: sitk.Image, seg) -> None:
    labels, names = seg
    landmarks = landmarks_from_labels(labels, names)
    assert set(landmarks) == {"femur_end"}  # the bottom of the hip bones is cut by the field of view
    z, s = score_world_z(model, ct)
    assert abs(np.interp(landmarks["femur_end"], z, s) - LANDMARK_SCORES["femur_end"]) < 5
    # Not used for calibration: the middle of T12 should land near "upper abdomen, ~40".
    lab = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))
    t12 = np.nonzero((lab == names["vertebrae_T12"]).any(axis=(1, 2)))[0]
    assert abs(np.interp(z[t12].mean(), z, s) - 40) < 6


def test_flipped_z_gives_same_world_scores(model: BodyPartModel, ct: sitk.Image) -> None:
    arr = sitk.GetArrayFromImage(ct)[::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    flipped.SetSpacing(ct.GetSpacing())
    flipped.SetOrigin(ct.TransformIndexToPhysicalPoint((0, 0, ct.GetSize()[2] - 1)))
    d = np.asarray(ct.GetDirection()).reshape(3, 3).copy()
    d[:, 2] *= -1
    flipped.SetDirection(d.ravel().tolist())
    z1, s1 = score_world_z(model, ct)
    z2, s2 = score_world_z(model, flipped)
    np.testing.assert_allclose(z1, z2, atol=1e-6)
    np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_save_load_roundtrip_and_tampering(model: BodyPartModel, ct: sitk.Image, scores: np.ndarray,
                                           tmp_path: Path) -> None:
    path = tmp_path / "bpr.safetensors"
    sha = model.save(path)
    assert sha == sha256_file(path)
    again = BodyPartModel.load(path, sha256=sha)
    np.testing.assert_array_equal(again.score_slices(ct), scores)
    assert again.info == model.info

    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # a weight byte
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        BodyPartModel.load(bad, sha256=sha)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 8 + bytes(data[8:]))  # header length destroyed
    with pytest.raises(ModelError):
        BodyPartModel.load(broken)
    with pytest.raises(ModelError):
        BodyPartModel.load(tmp_path / "missing.safetensors")


def test_anatomy_ranges_on_real_labels(scores: np.ndarray, seg) -> None:
    labels, names = seg
    lab = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))
    ranges = anatomy_ranges(scores, lab, names)
    assert "brain" not in ranges  # absent anatomies are left out
    assert ranges["liver"][0] > ranges["femur_left"][1]
    assert ranges["vertebrae_L1"][0] > ranges["vertebrae_L5"][0]
    for lo, hi in ranges.values():
        assert lo <= hi
    with pytest.raises(ValueError):
        anatomy_ranges(scores[:-1], lab, names)


def test_decoder_range_and_window() -> None:
    ranges = {"liver": (30.0, 50.0), "spleen": (35.0, 45.0), "femur_left": (-5.0, 10.0)}
    assert decoder_range(ranges, ["liver", "spleen"], margin=0.0) == (30.0, 50.0)
    # union widened by 0.25 x the largest single extent (liver, 20)
    assert decoder_range(ranges, ["liver", "spleen"]) == pytest.approx((25.0, 55.0))
    assert decoder_range(ranges, ["liver", "femur_left"], margin=0.5) == pytest.approx((-15.0, 60.0))
    assert decoder_range(ranges, ["brain"]) is None
    s = np.linspace(0, 60, 61)
    assert slices_in_window(s, (25.0, 55.0)) == (25, 56)
    assert slices_in_window(s, (100.0, 120.0)) is None
    assert slices_in_window(s, None) == (0, 61)


def test_clean_scores_removes_outliers() -> None:
    rng = np.random.default_rng(0)
    z = np.arange(80) * 2.5
    raw = 5 + 0.12 * z + rng.normal(0, 0.4, z.size)
    raw[[10, 40, 41]] += [15, -20, 25]
    raw[60] = np.nan
    cleaned, slope, outliers = clean_scores(z, raw)
    assert np.isfinite(cleaned).all() and np.all(np.diff(cleaned) >= 0)
    assert outliers == 4 and slope == pytest.approx(0.12, rel=0.05)
    assert np.abs(cleaned - (5 + 0.12 * z)).max() < 1.5


def test_train_smoke(shared_data: Path, tmp_path: Path) -> None:
    small = sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz"))
    m = train_bodypart([small], steps=2, seed=1, landmarks=[{}])
    assert np.isfinite(m.score_slices(small)).all() and not m.info["calibrated"]
    sha = m.save(tmp_path / "m.safetensors")
    assert BodyPartModel.load(tmp_path / "m.safetensors", sha).info["steps"] == 2
    with pytest.raises(InputError):
        train_bodypart([small], steps=1, seed=0, landmarks=[{"nose": 1.0}])


def test_cli_score_json(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clnet.bodypart import cli

    parser = argparse.ArgumentParser(prog="clnet")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bodypart", "score", str(shared_data / "example_ct_sm.nii.gz"), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["scores"]) == len(out["z_mm"]) == 30
