"""Slicer's GIL behaviour, reproduced: the main thread holds the GIL while it idles.

Slicer and CTK never release the GIL while the Qt event loop waits, so a Python thread in the
Slicer process barely advances (issue 16 measured 18 % of a 104 s job after 300 s). Here the main
thread idles in ``usleep`` called through ``ctypes.PyDLL``, which keeps the GIL, and polls the job
every 200 ms as the widget's QTimer does. A job in a worker process must finish as fast as with a
free main thread (within 1.5x); the same work in a Python thread must not (the harness is real).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "CLNetSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from CLNetSegmentationLib.process_job import ProcessJob  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="needs usleep from the C library")

POLL_US = 200_000  # the widget's QTimer interval


def _usleep():
    usleep = ctypes.PyDLL(None).usleep  # PyDLL: the call keeps the GIL, as Slicer's idle loop does
    usleep.argtypes = [ctypes.c_uint]
    return usleep


def idle_holding_gil(until) -> float:
    """Seconds until ``until()`` is true, the main thread holding the GIL between checks."""
    usleep = _usleep()
    start = time.monotonic()
    while not until():
        usleep(POLL_US)
    return time.monotonic() - start


def idle_free(until) -> float:
    """The same with a main thread that releases the GIL while it waits."""
    start = time.monotonic()
    while not until():
        time.sleep(POLL_US / 1e6)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    import SimpleITK as sitk
    from clnet.data import example_ct

    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(example_ct()))[30:94, 20:76, 50:90], str(path))
    return path


def _timed_worker_run(idle, small_ct, model, out) -> float:
    job = ProcessJob(["segment", str(small_ct), "-o", str(out), "--model", str(model), "--device", "cpu"]).start()
    seconds = idle(job.poll)
    assert job.finish()["present"], "the worker produced nothing"
    return seconds


def test_gil_held_main_thread_does_not_slow_the_worker_process(small_ct, tiny_model_dir, tmp_path):
    free = _timed_worker_run(idle_free, small_ct, tiny_model_dir, tmp_path / "free")
    held = _timed_worker_run(idle_holding_gil, small_ct, tiny_model_dir, tmp_path / "held")
    if held > 1.5 * free:  # a shared CI machine can be noisy: compare the best of two runs each
        free = min(free, _timed_worker_run(idle_free, small_ct, tiny_model_dir, tmp_path / "free2"))
        held = min(held, _timed_worker_run(idle_holding_gil, small_ct, tiny_model_dir, tmp_path / "held2"))
    print(f"worker process: {free:.2f} s with a free main thread, {held:.2f} s with the GIL held")
    assert held <= 1.5 * free, f"{held:.1f} s with the GIL held vs {free:.1f} s free"


def test_gil_harness_starves_a_python_thread(small_ct, tiny_model_dir):
    """The old design (engine in a thread of the GUI process) under the same harness: it crawls."""
    from clnet.inference.segmenter import Segmenter

    segmenter = Segmenter(tiny_model_dir, device="cpu")
    segmenter.segment(small_ct)  # warm up: first-call costs must not count

    def run_in_thread(cancel: threading.Event) -> threading.Thread:
        def work() -> None:
            try:
                segmenter.segment(small_ct, cancel=cancel)
            except Exception:  # CancelledError at the end of the test
                pass

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    cancel = threading.Event()
    thread = run_in_thread(cancel)
    free = idle_free(lambda: not thread.is_alive())
    budget = max(5 * free, 3.0)
    cancel = threading.Event()
    thread = run_in_thread(cancel)
    deadline = time.monotonic() + budget
    held = idle_holding_gil(lambda: not thread.is_alive() or time.monotonic() > deadline)
    finished = not thread.is_alive()
    cancel.set()
    thread.join(timeout=120)
    print(f"Python thread: {free:.2f} s with a free main thread; not done after {held:.2f} s with the GIL held")
    assert not finished, f"the thread finished in {held:.1f} s with the GIL held: the harness does not hold it"
