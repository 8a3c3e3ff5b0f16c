"""The `clnet` command end to end (subprocess, as a user runs it)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk


def clnet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "clnet", *args], capture_output=True, text=True, env=full_env,
                          timeout=600)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_clean_error(proc: subprocess.CompletedProcess, phrase: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert phrase.lower() in lines[0].lower(), lines[0]


def test_segment_writes_label_map_and_json_on_input_geometry(tiny_model_dir, ct_crop, tmp_path):
    before = sha(ct_crop)
    out = tmp_path / "out"
    proc = clnet("segment", str(ct_crop), "-o", str(out), "--model", str(tiny_model_dir), "--formats", "nifti",
                 "seg.nrrd", "--stats", "--preview")
    assert proc.returncode == 0, proc.stderr
    assert sha(ct_crop) == before
    seg = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    ct = sitk.ReadImage(str(ct_crop))
    assert seg.GetSize() == ct.GetSize()
    assert np.allclose(seg.GetOrigin(), ct.GetOrigin()) and np.allclose(seg.GetSpacing(), ct.GetSpacing())
    assert np.allclose(seg.GetDirection(), ct.GetDirection())
    info = json.loads((out / "segmentation.json").read_text())
    values = set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) - {0}
    present = {int(k) for k, v in info["labels"].items() if v["present"]}
    assert values == present
    for v in info["labels"].values():
        assert {"name", "region", "color", "terminology"} <= set(v)
    assert info["settings"]["model"] == "tiny-random"
    for f in ("segmentation.seg.nrrd", "statistics.csv", "preview.png"):
        assert (out / f).is_file()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_subset_by_anatomy_names(tiny_model_dir, ct_crop, tmp_path):
    proc = clnet("segment", str(ct_crop), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir),
                 "--anatomies", "liver", "-q")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "o" / "segmentation.json").read_text())
    assert [v["name"] for v in info["labels"].values()] == ["Liver"]
    assert info["settings"]["locate"]["used"] is True  # a subset: the coarse pass runs by default
    assert info["settings"]["precision"] == "float32"
    proc = clnet("segment", str(ct_crop), "-o", str(tmp_path / "n"), "--model", str(tiny_model_dir),
                 "--anatomies", "liver", "--no-locate", "--precision", "float32", "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "n" / "segmentation.json").read_text())["settings"]["locate"]["used"] is False


def test_dicom_series_input(tiny_model_dir, shared_data, tmp_path):
    proc = clnet("segment", str(shared_data / "example_ct_dicom"), "-o", str(tmp_path / "d"), "--model",
                 str(tiny_model_dir), "-q", "--fast")
    assert proc.returncode == 0, proc.stderr
    seg = sitk.ReadImage(str(tmp_path / "d" / "segmentation.nii.gz"))
    assert seg.GetSize() == (512, 512, 20)
    assert np.allclose(seg.GetSpacing(), (0.977, 0.977, 2.0), atol=1e-3)


def test_anatomies_json_lists_235(tiny_model_dir):
    proc = clnet("anatomies", "--json", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert len(items) == 235
    assert {"name", "label", "region", "decoder", "color", "terminology", "available"} <= set(items[0])
    assert {i["name"] for i in items if i["available"]} == {"Liver", "Spleen", "Kidney_L", "Kidney_R",
                                                            "Bone_Vert_L1", "Bone_Vert_L2"}
    text = clnet("anatomies", "--model", str(tiny_model_dir))
    assert text.returncode == 0 and "Abdomen & Pelvis" in text.stdout


def test_models_verify_and_list(tiny_model_dir, tmp_path):
    proc = clnet("models", "verify", str(tiny_model_dir))
    assert proc.returncode == 0 and "OK" in proc.stdout
    env = {"CLNET_HOME": str(tmp_path / "home")}
    assert clnet("models", "install", str(tiny_model_dir), "--name", "t", env=env).returncode == 0
    listed = clnet("models", "list", env=env)
    assert "t " in listed.stdout


def test_evaluate_identical_maps(shared_data):
    seg = shared_data / "example_seg.nii.gz"
    proc = clnet("evaluate", str(seg), str(seg), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all(r["dice"] == 1.0 for r in rows)


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("mr", "--force"),
        ("2d", "2D"),
        ("corrupt", "truncated"),
        ("missing", "does not exist"),
        ("unknown_anatomy", "Unknown anatomy"),
    ],
)
def test_bad_inputs_end_with_one_clear_line(case, phrase, tiny_model_dir, shared_data, tmp_path):
    src = shared_data / "example_ct_sm.nii.gz"
    extra: list[str] = []
    if case == "mr":
        src = shared_data / "example_mr_sm.nii.gz"
    elif case == "2d":
        src = tmp_path / "slice.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz"))[:, :, 5], str(src))
    elif case == "corrupt":
        src = tmp_path / "broken.nii.gz"
        src.write_bytes((shared_data / "example_ct_sm.nii.gz").read_bytes()[:20000])
    elif case == "missing":
        src = tmp_path / "nothing.nii.gz"
    elif case == "unknown_anatomy":
        extra = ["--anatomies", "livr"]
    before = sha(src) if src.exists() else None
    out = tmp_path / "out"
    proc = clnet("segment", str(src), "-o", str(out), "--model", str(tiny_model_dir), "-q", *extra)
    assert_clean_error(proc, phrase)
    assert not (out / "segmentation.nii.gz").exists()
    if before:
        assert sha(src) == before


def test_missing_model_says_how_to_get_one(ct_crop, tmp_path):
    proc = clnet("segment", str(ct_crop), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope"))
    assert_clean_error(proc, "not found")


def test_progress_json_writes_only_events_on_stdout(tiny_model_dir, ct_crop, tmp_path):
    from clnet.events import PROTOCOL, parse_event

    out = tmp_path / "o"
    proc = clnet("segment", str(ct_crop), "-o", str(out), "--model", str(tiny_model_dir), "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    assert None not in events, proc.stdout
    assert events[0] == {"event": "hello", "protocol": PROTOCOL, "command": "segment"}
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["event"] == "result"
    assert events[-1]["outputs"]["nifti"] == str(out / "segmentation.nii.gz")
    assert (out / "segmentation.nii.gz").is_file()

    bad = clnet("segment", str(tmp_path / "missing.nii.gz"), "-o", str(out), "--progress", "json")
    assert bad.returncode == 2
    last = parse_event(bad.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["type"] == "InputError" and "does not exist" in last["message"]
