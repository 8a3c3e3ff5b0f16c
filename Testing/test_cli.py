"""The `clnet` command end to end (subprocess, as a user runs it)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.errors import ClnetError


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
    labels = shared_data / "labels.json"
    proc = clnet("evaluate", str(seg), str(seg), "--reference-labels", str(labels), "--prediction-labels",
                 str(labels), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = report["anatomies"]
    assert len(rows) == 41  # every label in the map is a catalog anatomy
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["msd_mm"] == 0.0 for r in rows)
    assert report["mean"]["dice"] == 1.0


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
        src = shared_data / "example_mr_sm.nii.gz"  # the refusal names the CLI flag, not the Python argument
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
    assert "force=True" not in proc.stderr
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


# ---------------------------------------------------------------- first contact: start-up, --example, outputs

LIGHT = ("torch", "monai", "SimpleITK")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["anatomies"], ["anatomies", "--json"],
                                  ["models", "list"], ["segment", "--help"], ["evaluate", "--help"]])
def test_light_commands_import_neither_torch_nor_simpleitk(argv):
    code = ("import json, sys, time\nt = time.perf_counter()\nfrom clnet.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps([sorted(m for m in {LIGHT!r} if m in sys.modules), time.perf_counter() - t]),"
            " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    heavy, seconds = json.loads(proc.stderr.strip().splitlines()[-1])
    assert heavy == [], f"{argv} imported {heavy}"
    assert seconds < 5.0  # about 0.1-0.3 s on the build machine; the bound only catches torch creeping back


def test_plugin_commands_are_listed_as_their_modules_register_them():
    from clnet.cli import PLUGIN_COMMANDS, build_parser

    full = build_parser()  # loads every plug-in
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = {a.dest: a.help for a in sub._choices_actions}
    listed = {name: text for commands in PLUGIN_COMMANDS.values() for name, text in commands.items()}
    assert {k: registered.get(k) for k in listed} == listed
    light = build_parser(plugins=[])
    assert set(light._subparsers._group_actions[0].choices) == set(sub.choices)


def test_debug_is_accepted_anywhere_on_the_line(tiny_model_dir):
    from clnet.cli import _split_debug, main

    assert _split_debug(["segment", "x", "--debug", "-o", "o"]) == (["segment", "x", "-o", "o"], True)
    assert _split_debug(["--debug", "anatomies"]) == (["anatomies"], True)
    assert _split_debug(["anatomies", "--", "--debug"]) == (["anatomies", "--", "--debug"], False)
    assert main(["anatomies", "--json", "--model", str(tiny_model_dir), "--debug"]) == 0
    proc = clnet("models", "verify", "no-such-model", "--debug")  # a ClnetError stays one line, with or without --debug
    assert_clean_error(proc, "not found")


def test_a_bad_output_location_fails_before_any_work(tmp_path):
    start = time.perf_counter()
    proc = clnet("segment", "--example", "-o", "/proc/clnet_out", "--progress", "json")
    seconds = time.perf_counter() - start
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "/proc/clnet_out" in proc.stderr
    assert [json.loads(ln)["event"] for ln in proc.stdout.splitlines()] == ["hello", "error"]
    assert seconds < 5.0  # 0.2 s on the build machine: no model, no image was loaded
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(clnet("segment", "--example", "-o", str(blocker / "out")), "is a file")


def test_segment_needs_an_input_or_example(tmp_path):
    assert_clean_error(clnet("segment", "-o", str(tmp_path / "o")), "--example")
    assert_clean_error(clnet("segment", "ct.nii.gz", "--example", "-o", str(tmp_path / "o")), "not both")
    assert not (tmp_path / "o").exists()  # the refused run removed the folder it had made


def test_example_run_writes_totalsegmentator_style_outputs(tiny_model_dir, example_ct, tmp_path):
    from clnet.io.nifti_header import read_xform_codes

    out = tmp_path / "out"
    proc = clnet("segment", "--example", "-o", str(out), "--model", str(tiny_model_dir), "--fast", "--stats",
                 "--preview", "--formats", "nifti", "masks", "--names", "totalsegmentator")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "segmentation.json").read_text())
    requested = {v["aliases"][0] for v in info["labels"].values()}
    found = sum(v["present"] for v in info["labels"].values())
    assert f"{found} of the model's 6 anatomies found" in proc.stdout
    assert "requested" not in proc.stdout  # nothing was requested
    # One mask per requested anatomy, TotalSegmentator's names, empty ones included.
    assert {p.name.removesuffix(".nii.gz") for p in (out / "masks").iterdir()} == requested
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats) == requested and all(set(v) == {"volume", "intensity"} for v in stats.values())
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nii.gz")))
    for label, entry in info["labels"].items():
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / f"{entry['aliases'][0]}.nii.gz")))
        np.testing.assert_array_equal(mask, seg == int(label))
        assert stats[entry["aliases"][0]]["volume"] == pytest.approx(mask.sum() * 27.0)  # 3 mm voxels
    # The input stores sform 2 / qform 0 (SimpleITK alone would write 1 / 1).
    assert read_xform_codes(example_ct) == (0, 2)
    assert read_xform_codes(out / "segmentation.nii.gz") == (0, 2)
    assert read_xform_codes(next((out / "masks").iterdir())) == (0, 2)


def test_subset_summary_counts_requested_anatomies(tiny_model_dir, ct_crop, tmp_path):
    proc = clnet("segment", str(ct_crop), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir),
                 "--anatomies", "Left kidney", "liver", "--fast")
    assert proc.returncode == 0, proc.stderr
    assert "of 2 requested anatomies found" in proc.stdout


def test_display_names_resolve_in_any_word_order_and_spelling():
    from clnet.catalog import load_catalog

    catalog = load_catalog()
    for spelling in ("Kidney (left)", "Left kidney", "kidney-left", "KIDNEY_LEFT", "Kidney_L", "left  kidney"):
        assert catalog.by_name(spelling).name == "Kidney_L", spelling
    assert catalog.by_name("middle_ear_left").name == "Ear_Mid_L"  # TotalSegmentator style of a display name
    for a in catalog:  # every TotalSegmentator-style name is unique and leads back to its anatomy
        assert catalog.by_name(a.totalsegmentator_name) is a
    with pytest.raises(ClnetError, match="Unknown anatomy"):
        catalog.by_name("kidney")  # ambiguous or unknown names still fail


def test_progress_bar_fits_80_columns(tiny_model_dir, ct_crop, tmp_path):
    """The bar as a terminal of 80 columns shows it: every redraw fits one line."""
    import fcntl
    import pty
    import struct
    import termios

    out = tmp_path / "o"
    pid, fd = pty.fork()
    if pid == 0:  # child: a terminal 80 columns wide
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.execv(sys.executable, [sys.executable, "-m", "clnet", "segment", str(ct_crop), "-o", str(out),
                                  "--model", str(tiny_model_dir), "--fast"])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    redraws = [part for line in text.replace("\r\n", "\n").split("\n") for part in line.split("\r")]
    bars = [r for r in redraws if "%|" in r]
    assert bars, text
    assert max(len(r.rstrip()) for r in bars) <= 80, max(bars, key=len)
