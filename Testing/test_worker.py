"""ProcessJob: a ``clnet`` command in a worker process, followed by polling (no Slicer, no Qt).

Real worker processes on a small crop of the example CT with a tiny random-weight model: success,
cancel (through a stand-in for Slicer's PythonSlicer launcher, which puts a second process between
us and the Python that computes), the parent dying, an out-of-memory kill, a missing torch, bad
input and a broken event stream.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "CLNetSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from clnet.errors import CancelledError, ClnetError, InputError  # noqa: E402
from CLNetSegmentationLib.process_job import (  # noqa: E402
    EVENTS_FILE,
    LOG_FILE,
    ProcessJob,
    engineRoot,
    eventsOf,
    workerEnvironment,
)
from CLNetSegmentationLib.worker_errors import (  # noqa: E402
    DependencyMissingError,
    WorkerError,
    errorFromEvent,
    failureFromExit,
)

posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX here")


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """A 64x56x40 crop of the bundled example CT (3 mm voxels)."""
    import SimpleITK as sitk
    from clnet.data import example_ct

    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(example_ct()))[30:94, 20:76, 50:90], str(path))
    return path


def segment_args(ct: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(ct), "-o", str(out), "--model", str(model), "--device", "cpu", *extra]


def run_to_end(job: ProcessJob, timeout: float = 180, until=None) -> list[tuple[str, float]]:
    """Poll like the widget's timer; returns the progress seen. ``until(job)`` may act on the way."""
    seen = []
    start = time.monotonic()
    while not job.poll():
        if not seen or seen[-1] != job.progress:
            seen.append(job.progress)
        if until is not None:
            until(job)
        assert time.monotonic() - start < timeout, "the worker did not end in time"
        time.sleep(0.05)
    return seen


def wait_for_tiles(job: ProcessJob, timeout: float = 120) -> None:
    start = time.monotonic()
    while not job.progress[0].startswith("Network"):
        assert not job.poll(), f"the worker ended early: {job.details[-500:]}"
        assert time.monotonic() - start < timeout
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 15) -> bool:
    start = time.monotonic()
    while alive(pid):
        if time.monotonic() - start > timeout:
            return False
        time.sleep(0.05)
    return True


def test_segment_in_a_worker_process_gives_the_engines_labels(small_ct, tiny_model_dir, tmp_path):
    import SimpleITK as sitk
    from clnet.inference.segmenter import Segmenter

    out = tmp_path / "out"
    job = ProcessJob(segment_args(small_ct, out, tiny_model_dir, "--anatomies", "Liver", "Spleen")).start()
    assert job.pid != os.getpid() and "--progress" in job.args
    seen = run_to_end(job)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and job.progress == ("Done", 1.0)
    messages = job.takeMessages()
    assert any(m.startswith("Network: tile") for m in messages) and job.takeMessages() == []
    result = job.finish()
    assert result["event"] == "result" and sorted(result["requested"]) == ["Liver", "Spleen"]
    assert not job.workDir.exists()  # the job's own folder (events, log) is gone
    worker = sitk.GetArrayFromImage(sitk.ReadImage(result["outputs"]["nifti"]))
    direct = Segmenter(tiny_model_dir, device="cpu").segment(small_ct, anatomies=["Liver", "Spleen"])
    assert np.array_equal(worker, sitk.GetArrayFromImage(direct.labels))


LAUNCHER = textwrap.dedent("""
    # Stand-in for Slicer's PythonSlicer launcher (CTK AppLauncher): starts the real Python as a child
    # with the same stdin/stdout/stderr, waits for it, and reports a crash as exit code 1.
    import os, subprocess, sys
    child = subprocess.Popen([sys.executable, *sys.argv[1:]])
    with open("grandchild.pid", "w") as f:
        f.write(str(child.pid))
    code = child.wait()
    if code < 0:
        print(f"[{sys.executable}] exit abnormally - Report the problem.", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
""")


@posix_only
def test_cancel_ends_the_launcher_and_the_python_it_started(small_ct, tiny_model_dir, tmp_path):
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    job = ProcessJob(segment_args(small_ct, tmp_path / "out", tiny_model_dir),
                     python=[sys.executable, str(launcher)], graceSeconds=2.0).start()
    wait_for_tiles(job)
    grandchild = int((job.workDir / "grandchild.pid").read_text())
    assert alive(grandchild) and grandchild != job.pid
    job.cancel()
    run_to_end(job, timeout=30)
    assert wait_gone(grandchild), "the Python behind the launcher survived Cancel"
    with pytest.raises(CancelledError):
        job.finish()
    assert not job.workDir.exists()


@posix_only
def test_launcher_reporting_a_crash_gives_a_clear_message(small_ct, tiny_model_dir, tmp_path):
    """Through the launcher an out-of-memory kill shows as exit code 1 plus its 'exit abnormally' line."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    job = ProcessJob(segment_args(small_ct, tmp_path / "out", tiny_model_dir),
                     python=[sys.executable, str(launcher)]).start()
    wait_for_tiles(job)
    os.kill(int((job.workDir / "grandchild.pid").read_text()), signal.SIGKILL)  # what the OOM killer does
    run_to_end(job, timeout=30)
    assert job.returncode == 1
    with pytest.raises(WorkerError, match="stopped unexpectedly.*memory"):
        job.finish()


@posix_only
def test_killed_worker_says_memory_ran_out(small_ct, tiny_model_dir, tmp_path):
    job = ProcessJob(segment_args(small_ct, tmp_path / "out", tiny_model_dir)).start()
    wait_for_tiles(job)
    os.kill(job.pid, signal.SIGKILL)
    run_to_end(job, timeout=30)
    assert job.returncode == -signal.SIGKILL
    with pytest.raises(WorkerError, match="killed.*ran out of memory") as info:
        job.finish()
    assert "Fast mode" in str(info.value)


@posix_only
def test_worker_stops_when_its_parent_dies(small_ct, tiny_model_dir, tmp_path):
    """Slicer crashing must not leave the worker computing: its stdin closes and it exits."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(MODULE_DIR)!r})
            from CLNetSegmentationLib.process_job import ProcessJob
            job = ProcessJob({segment_args(small_ct, tmp_path / "out", tiny_model_dir)!r}).start()
            print(job.pid, job.workDir, flush=True)
            while not job.progress[0].startswith("Network"):
                job.poll()
                time.sleep(0.05)
            print("computing", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    pid, work_dir = parent.stdout.readline().split()
    assert parent.stdout.readline().strip() == "computing"
    assert alive(int(pid))
    parent.kill()
    parent.wait()
    try:
        assert wait_gone(int(pid)), "the worker kept running after its parent died"
        events = [e["event"] for e in eventsOf(Path(work_dir) / EVENTS_FILE)]
        assert "progress" in events and "result" not in events, "the worker ran to the end instead of stopping"
        assert not (tmp_path / "out" / "segmentation.nii.gz").exists()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def test_missing_torch_in_the_worker(small_ct, tiny_model_dir, tmp_path):
    """A Slicer whose Python has no torch: one message that says to install the PyTorch extension."""
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = workerEnvironment({"PYTHONPATH": os.pathsep.join([str(blocker), str(engineRoot())])})
    job = ProcessJob(segment_args(small_ct, tmp_path / "out", tiny_model_dir), env=env).start()
    run_to_end(job, timeout=60)
    with pytest.raises(DependencyMissingError, match="PyTorch is not installed") as info:
        job.finish()
    assert "PyTorch extension" in str(info.value)


def test_bad_input_keeps_the_engines_error_and_hint(tiny_model_dir, tmp_path):
    job = ProcessJob(segment_args(tmp_path / "nothing.nii.gz", tmp_path / "out", tiny_model_dir)).start()
    run_to_end(job, timeout=60)
    with pytest.raises(InputError) as info:
        job.finish()
    assert "nothing.nii.gz" in str(info.value) and info.value.hint


def test_usage_error_shows_the_workers_last_words(small_ct, tmp_path):
    job = ProcessJob(["segment", str(small_ct), "-o", str(tmp_path / "out"), "--no-such-option"]).start()
    run_to_end(job, timeout=60)
    assert job.returncode == 2
    with pytest.raises(WorkerError, match="exit code 2.*no-such-option"):
        job.finish()


FAKE_WORKER = textwrap.dedent("""
    import sys
    out = sys.stdout
    out.write('{"event": "hello", "protocol": "clnet-events/1"}\\n')
    out.write('some library printed this\\n')
    out.write('{"event": "progress", "stage": "Network: tile 1/2", "fraction": 0.5}\\n')
    out.write('{"event": "message", "text": "warning: \\u00e9l\\u00e8ve"}\\n')
    out.write('{"event": "result", "outputs": {}, "present": [], "requested": ["Liver"]}')  # no newline
    out.flush()
""")


def test_event_stream_noise_and_a_last_line_without_newline(tmp_path):
    job = ProcessJob(["segment"], python=[sys.executable, "-c", FAKE_WORKER], keepWorkDir=True).start()
    run_to_end(job, timeout=60)
    assert job.takeMessages() == ["Network: tile 1/2", "warning: \u00e9l\u00e8ve"]
    assert job.finish()["requested"] == ["Liver"]
    assert (job.workDir / LOG_FILE).exists()  # kept on request
    job.keepWorkDir = False
    job.removeWorkDir()


def test_start_failure_is_a_clear_error(tmp_path):
    job = ProcessJob(["segment"], python=str(tmp_path / "no-such-python"))
    with pytest.raises(WorkerError, match="Could not start"):
        job.start()
    assert not job.workDir.exists()


def test_error_mapping_without_processes():
    assert isinstance(errorFromEvent({"type": "CancelledError", "message": "stop"}), CancelledError)
    model = errorFromEvent({"type": "ModelError", "message": "bad", "hint": "fix it"})
    assert type(model).__name__ == "ModelError" and str(model) == "bad fix it"
    assert "SimpleITK" in str(errorFromEvent({"type": "ModuleNotFoundError", "message": "No module named 'SimpleITK'"}))
    assert "out of memory" in str(errorFromEvent({"type": "MemoryError", "message": ""}))
    assert "unexpected error (RuntimeError: boom)" in str(errorFromEvent({"type": "RuntimeError", "message": "boom"}))
    assert "crashed" in str(failureFromExit(0xC0000005))  # Windows access violation
    assert "crashed" in str(failureFromExit(-signal.SIGSEGV))
    assert "without a result" in str(failureFromExit(0, ""))
    missing = failureFromExit(1, "Traceback ...\nModuleNotFoundError: No module named 'numpy.core'\n")
    assert isinstance(missing, DependencyMissingError) and "'numpy'" in str(missing)
    assert isinstance(failureFromExit(3, "x"), ClnetError)
    # A training or download job names itself: not "the segmentation process".
    killed = str(failureFromExit(-signal.SIGKILL, "", task="training"))
    assert killed.startswith("The training process was killed") and "Fast mode" not in killed
    assert "download process" in str(errorFromEvent({"type": "MemoryError", "message": ""}, task="download"))
