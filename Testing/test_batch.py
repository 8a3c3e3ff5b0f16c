"""`clnet batch`: many cases, one model load, per-case failures, resume, kill -9 recovery, Ray."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.batch import discover_cases, read_records, run_batch
from clnet.batch.cases import assign_ids, safe_id
from clnet.checkpoint import sha256_file
from clnet.errors import ClnetError, InputError

CROPS = {"c0": (10, 5, 50), "c1": (20, 0, 56), "c2": (50, 40, 62), "c3": (70, 0, 62)}
CROP_SIZE = (40, 40, 20)  # 3 mm voxels: one tile of the micro model


def clnet_in_process(*args: str) -> tuple[int, str, str]:
    """`clnet ARGS` run through the CLI's main() in this process (no interpreter start-up cost)."""
    from clnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    """Random weights, 4 mm, 16×32×32 patch: a case costs one small tile (keeps the file fast)."""
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder

    prep = Preprocessing(spacing_zyx=(4.0, 4.0, 4.0), fast_spacing_zyx=(8.0, 16.0, 16.0), patch_size_zyx=(16, 32, 32),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0), overlap=0.25)
    manifest = build_manifest("micro-random", tiny_encoder(), {"abdomen": ["Liver", "Spleen", "Kidney_L"],
                                                               "spine": ["Bone_Vert_L1", "Liver"]}, prep)
    return save_random_model(tmp_path_factory.mktemp("micro") / "model", manifest, seed=5)


@pytest.fixture(scope="module")
def crops(example_ct, tmp_path_factory) -> dict[str, Path]:
    """Four small crops of the real CT, one file each."""
    ct = sitk.ReadImage(str(example_ct))
    folder = tmp_path_factory.mktemp("crops")
    out = {}
    for cid, (x, y, z) in CROPS.items():
        out[cid] = folder / f"{cid}.nii.gz"
        sitk.WriteImage(ct[x:x + CROP_SIZE[0], y:y + CROP_SIZE[1], z:z + CROP_SIZE[2]], str(out[cid]))
    return out


@pytest.fixture(scope="module")
def segmenter(micro_model):
    from clnet.inference import Segmenter

    return Segmenter(str(micro_model), device="cpu")


@pytest.fixture(scope="module")
def reference(segmenter, crops) -> dict[str, tuple[np.ndarray, dict]]:
    """Direct `Segmenter.segment` result per crop: (labels, label part of segmentation.json)."""
    out = {}
    for cid, path in crops.items():
        result = segmenter.segment(path)
        out[cid] = (sitk.GetArrayFromImage(result.labels), result.label_map()["labels"])
    return out


def assert_matches_reference(case_dir: Path, ref: tuple[np.ndarray, dict]) -> None:
    np.testing.assert_array_equal(labels_of(case_dir / "segmentation.nii.gz"), ref[0])
    assert json.loads((case_dir / "segmentation.json").read_text())["labels"] == ref[1]


def batch_folder(crops: dict[str, Path], tmp_path: Path, ids, corrupt: bool = False) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for cid in ids:
        os.symlink(crops[cid], folder / crops[cid].name)
    if corrupt:
        (folder / "broken.nii.gz").write_bytes(b"not an image at all")
    return folder


def file_state(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()} | {
        str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/.done")}


@pytest.fixture(scope="module")
def first_run(micro_model, crops, tmp_path_factory):
    """`clnet batch` over a folder of 3 good crops and 1 corrupt file."""
    tmp = tmp_path_factory.mktemp("first")
    folder = batch_folder(crops, tmp, ["c0", "c1", "c2"], corrupt=True)
    out = tmp / "out"
    result = clnet_in_process("batch", str(folder), "-o", str(out), "--model", str(micro_model), "--device", "cpu",
                              "-q")
    return result, folder, out


def test_batch_records_bad_case_and_keeps_the_others(first_run, reference):
    (code, stdout, stderr), _, out = first_run
    assert code == 1, stderr
    assert "failed broken: " in stderr and "Traceback" not in stderr
    last = stdout.strip().splitlines()[-1]
    assert "1 failed" in last and "4 case(s)" in last
    for cid in ("c0", "c1", "c2"):
        assert_matches_reference(out / cid, reference[cid])
        assert (out / cid / ".done").is_file()
    records = {r["id"]: r for r in read_records(out / "batch_manifest.jsonl")}
    assert records["broken"]["status"] == "failed"
    assert "not gzip-compressed" in records["broken"]["error"]
    assert not (out / "broken" / ".done").exists()
    for cid in ("c0", "c1", "c2"):
        rec = records[cid]
        assert rec["status"] == "ok" and rec["error"] is None
        assert rec["model"]["name"] == "micro-random" and len(rec["model"]["manifest_sha256"]) == 64
        assert rec["anatomies"] and rec["timings_s"]["total"] > 0
        for rel, digest in rec["outputs"].items():
            assert sha256_file(out / cid / rel) == digest
    with open(out / "batch_manifest.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert {k: r["status"] for k, r in rows.items()} == {"broken": "failed", "c0": "ok", "c1": "ok", "c2": "ok"}


def test_resume_skips_verified_cases_and_retries_the_failed_one(first_run, micro_model):
    _, folder, out = first_run
    before = file_state(out)
    summary = run_batch([folder], out, model=str(micro_model), device="cpu")
    statuses = {r["id"]: r["status"] for r in summary.records}
    assert statuses == {"broken": "failed", "c0": "skipped", "c1": "skipped", "c2": "skipped"}
    assert summary.exit_code == 1
    assert file_state(out) == before  # nothing rewritten
    # A damaged output is detected by its sha256 and that case alone is redone.
    (out / "c1" / "segmentation.nii.gz").write_bytes(b"damaged")
    summary = run_batch([folder], out, model=str(micro_model), device="cpu", prefetch=0)
    statuses = {r["id"]: r["status"] for r in summary.records}
    assert statuses == {"broken": "failed", "c0": "skipped", "c1": "ok", "c2": "skipped"}


def test_no_resume_redoes_everything(segmenter, micro_model, crops, reference, tmp_path):
    out = tmp_path / "out"
    run_batch([crops["c0"]], out, segmenter=segmenter)
    summary = run_batch([crops["c0"]], out, segmenter=segmenter, resume=False)
    assert [r["status"] for r in summary.records] == ["ok"]
    assert_matches_reference(out / "c0", reference["c0"])
    # Other output-changing options make earlier outputs stale, too.
    summary = run_batch([crops["c0"]], out, segmenter=segmenter, anatomies=["Liver"])
    assert [r["status"] for r in summary.records] == ["ok"]
    # So does switching official-compatible inference (it changes the labels); the same switch again skips.
    summary = run_batch([crops["c0"]], out, model=str(micro_model), device="cpu", anatomies=["Liver"],
                        official_compat="on")
    assert [r["status"] for r in summary.records] == ["ok"]
    assert summary.records[0]["model"]["official_compat"] is True
    summary = run_batch([crops["c0"]], out, model=str(micro_model), device="cpu", anatomies=["Liver"],
                        official_compat="on")
    assert [r["status"] for r in summary.records] == ["skipped"]


def test_kill_9_half_way_then_resume(micro_model, crops, reference, tmp_path):
    folder = batch_folder(crops, tmp_path, list(CROPS))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clnet", "batch", str(folder), "-o", str(out), "--model", str(micro_model),
           "--device", "cpu", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/.done")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = {p.parent.name for p in out.glob("*/.done")}
    assert done_at_kill, "the first run was killed before any case finished"
    assert done_at_kill != set(CROPS), "every case finished before the kill; nothing was tested"

    code, _, stderr = clnet_in_process(*cmd[3:])  # the restart; in-process to save an interpreter start
    assert code == 0, stderr
    records = read_records(out / "batch_manifest.jsonl")
    second_run = records[-1]["run_id"]
    for cid in CROPS:
        assert_matches_reference(out / cid, reference[cid])
        assert sum(r["status"] == "ok" for r in records if r["id"] == cid) == 1, cid
        status = next(r["status"] for r in records if r["id"] == cid and r["run_id"] == second_run)
        assert status == ("skipped" if cid in done_at_kill else "ok"), cid
    assert not list(out.rglob(".*.tmp-*"))


def test_csv_with_ids_and_dicom_series_as_one_case(segmenter, crops, reference, shared_data, tmp_path):
    listing = tmp_path / "cases.csv"
    listing.write_text(f"id,path\npatient 7/a,{crops['c2']}\nseries,{shared_data / 'example_ct_dicom'}\n")
    out = tmp_path / "out"
    summary = run_batch([listing], out, segmenter=segmenter, fast=True)
    assert [(r["id"], r["status"]) for r in summary.records] == [("patient_7_a", "ok"), ("series", "ok")]
    seg = sitk.ReadImage(str(out / "series" / "segmentation.nii.gz"))
    assert seg.GetSize() == (512, 512, 20)
    fast_ref = sitk.GetArrayFromImage(segmenter.segment(crops["c2"], fast=True).labels)
    np.testing.assert_array_equal(labels_of(out / "patient_7_a" / "segmentation.nii.gz"), fast_ref)


def test_folder_expansion_and_ids(crops, shared_data, tmp_path):
    root = tmp_path / "cohort"
    (root / "case A").mkdir(parents=True)
    os.symlink(crops["c0"], root / "case A" / "ct.nii.gz")  # a case subfolder with one image → its name
    os.symlink(shared_data / "example_ct_dicom", root / "dicom")  # a DICOM series subfolder → one case
    os.symlink(crops["c1"], root / "c0.nii.gz")  # a loose case file
    (root / "notes.txt").write_text("ignored")
    cases = discover_cases([root, crops["c0"]])
    assert [c.id for c in cases] == ["c0", "case_A", "dicom", "c0_2"]
    assert cases[2].input == root / "dicom"
    assert [c.id for c in discover_cases([shared_data / "example_ct_dicom"])] == ["example_ct_dicom"]
    assert safe_id("../..") == "case" and safe_id("a b/c:d") == "a_b_c_d"
    with pytest.raises(InputError, match="repeats id"):
        assign_ids([("x", Path("a"), True), ("X", Path("b"), True)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        discover_cases([tmp_path / "empty"])


def test_torn_manifest_line_is_skipped(tmp_path):
    from clnet.batch.manifest import ManifestWriter, make_record

    path = tmp_path / "batch_manifest.jsonl"
    path.write_text(json.dumps(make_record("a", "x", "ok")) + "\n" + '{"id": "b", "sta')
    ManifestWriter(tmp_path).append(make_record("c", "y", "failed"))
    assert [r["id"] for r in read_records(path)] == ["a", "c"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_matches_local_and_records_failures(local_ray, micro_model, crops, reference, tmp_path):
    folder = batch_folder(crops, tmp_path, ["c0", "c3"], corrupt=True)
    out = tmp_path / "out"
    summary = run_batch([folder], out, model=str(micro_model), device="cpu", ray=True, ray_cpus_per_worker=2)
    assert local_ray.is_initialized()  # a caller's Ray instance is reused, not shut down
    statuses = {r["id"]: r["status"] for r in summary.records}
    assert statuses == {"broken": "failed", "c0": "ok", "c3": "ok"}
    assert summary.exit_code == 1
    failed = next(r for r in summary.records if r["id"] == "broken")
    assert "not gzip-compressed" in failed["error"] and failed["attempt"] == 1  # input errors are not retried
    for cid in ("c0", "c3"):
        assert_matches_reference(out / cid, reference[cid])
    # Resume on Ray is the driver's check, shared with the local runner; tested without Ray below.


class _FakeRef:
    def __init__(self, value) -> None:
        self.value = value


class _FakeRay:
    """Just enough of the Ray API for the driver loop: tasks complete in submission order."""

    class exceptions:  # mirrors ray.exceptions
        RayError = type("RayError", (Exception,), {})

    def wait(self, refs, num_returns=1):
        return refs[:1], refs[1:]

    def get(self, ref):
        if isinstance(ref.value, BaseException):
            raise ref.value
        return ref.value

    def cancel(self, ref) -> None:
        pass


def test_ray_driver_retries_only_unexpected_failures(tmp_path):
    from clnet.batch.cases import Case
    from clnet.batch.job import JobContext, SegmentOptions, failure_fields
    from clnet.batch.ray_backend import _dispatch
    from clnet.batch.resume import write_done

    fake = _FakeRay()
    ctx = JobContext(tmp_path, {"name": "m", "manifest_sha256": "0" * 64}, "key", "run1", backend="ray")
    seen: list[tuple[str, int]] = []

    class Actor:
        class run:  # mirrors actor.run.remote
            @staticmethod
            def remote(case, options, ctx, attempt):
                seen.append((case.id, attempt))
                if case.id == "flaky" and attempt == 1:
                    return _FakeRef(ctx.record(case, "failed", attempt=attempt, **failure_fields(MemoryError("oom"))))
                if case.id == "crash":
                    return _FakeRef(fake.exceptions.RayError("worker died"))
                if case.id == "bad":
                    return _FakeRef(ctx.record(case, "failed", attempt=attempt,
                                               **failure_fields(InputError("unreadable"))))
                return _FakeRef(ctx.record(case, "ok", attempt=attempt, outputs={}))

    done_dir = tmp_path / "done"
    done_dir.mkdir()
    (done_dir / "segmentation.json").write_text("{}")
    earlier = ctx.record(Case("done", Path("d")), "ok", outputs={"segmentation.json": sha256_file(
        done_dir / "segmentation.json")})
    write_done(done_dir, {**earlier, "run_id": "run0"}, "key")  # finished by a run killed before its append

    cases = [Case(i, Path(i)) for i in ("flaky", "crash", "bad", "fine", "done")]
    from clnet.batch.progress import NoProgress

    records = _dispatch(fake, [Actor()], cases, SegmentOptions(), ctx, True, 2, NoProgress())
    assert {r["id"]: (r["status"], r.get("attempt")) for r in records} == {
        "flaky": ("ok", 2), "crash": ("failed", 3), "bad": ("failed", 1), "fine": ("ok", 1), "done": ("skipped", None)}
    assert seen.count(("bad", 1)) == 1 and ("bad", 2) not in seen
    history = read_records(tmp_path / "batch_manifest.jsonl")
    assert [r["status"] for r in history if r["id"] == "crash"] == ["retrying", "retrying", "failed"]
    assert [r["status"] for r in history if r["id"] == "done"] == ["ok", "skipped"]  # recovered from .done


def test_batch_names_totalsegmentator_style_masks(micro_model, crops, tmp_path):
    """`clnet batch --names totalsegmentator` names mask files like `clnet segment` does."""
    out = tmp_path / "out"
    code, _, err = clnet_in_process("batch", str(crops["c0"]), "-o", str(out), "--model", str(micro_model),
                                    "--device", "cpu", "--formats", "masks", "--anatomies", "Liver", "Kidney_L",
                                    "--names", "totalsegmentator", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (out / "c0" / "masks").iterdir()) == ["kidney_left.nii.gz", "liver.nii.gz"]
    with pytest.raises(ClnetError, match="naming style"):
        run_batch([crops["c0"]], tmp_path / "bad", model=str(micro_model), names="nnunet")
