"""Bad inputs through the real ``clnet`` command: each case must end in one clear line and touch nothing.

Every case is built from the real example data (copied into ``tmp_path``, never modified in
place) and run as ``clnet segment CASE -o OUT --model TINY``. For each we check the exit code, that
an error is exactly one stderr line ``error: ...`` holding a key phrase (no traceback), that the
input's bytes are unchanged, and that OUT holds no partial output (no segmentation, no temp file).
Cases built from the CT that ships with clnet run everywhere; those that need ``../shared`` (DICOM, MR)
skip without it. The cases themselves are in ``bad_input_cases.py`` (built with ``bad_input_builders.py``).

Speed: starting Python and importing torch/monai/clnet costs several seconds per process on a
loaded machine, which for ~50 cases would blow the test budget. So the cases run through a *fork
server*: one helper process imports clnet once, then forks a fresh child per case that runs
``clnet/__main__.py`` with ``runpy`` exactly as ``python -m clnet`` does, with its stdout/stderr
file descriptors redirected and its exit status taken from the OS. Set ``CLNET_TEST_SPAWN=1`` to run
every case as a separate ``python -m clnet`` process instead; ``test_fork_server_matches_spawn``
checks that both give the same result on a few cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import SimpleITK as sitk
from bad_input_cases import CASES, Ctx

CASE_TIMEOUT_S = 180

# ---------------------------------------------------------------- running the CLI

_DRIVER = r"""
import json, os, runpy, select, signal, sys, time, traceback
import clnet.cli, clnet.inference, clnet.outputs, clnet.io, clnet.checkpoint, clnet.registry
clnet.cli.build_parser()  # imports the optional subcommands too, so children start warm
import torch
# One intra-op thread: the test machine is small and shared, and OpenMP threads spinning against
# each other made a single tile take seconds. Set before forking so no thread pool exists yet.
torch.set_num_threads(1)
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    out_path, err_path = req["stdout"], req["stderr"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.update(req["env"])
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [clnet.__file__.replace("__init__.py", "__main__.py"), *req["argv"]]
            try:
                runpy.run_module("clnet", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
    deadline = time.monotonic() + req["timeout"]
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
            with open(err_path, "a") as fh:
                fh.write("\n[test driver] killed after timeout\n")
        else:
            time.sleep(0.01)
    rc = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"rc": rc}) + "\n"); sys.stdout.flush()
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkServer:
    """One warm helper process; each :meth:`run` forks a child that runs ``python -m clnet``'s code."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, argv: list[str], env: dict[str, str], cwd: Path) -> Result:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        req = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
               "timeout": CASE_TIMEOUT_S}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return Result(reply["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    """The plain way: a new ``python -m clnet`` process."""
    proc = subprocess.run([sys.executable, "-m", "clnet", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=CASE_TIMEOUT_S)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def clnet_cli(tmp_path_factory) -> Callable[..., Result]:
    if os.environ.get("CLNET_TEST_SPAWN"):
        yield spawn
        return
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    try:
        yield server.run
    finally:
        server.close()


# ---------------------------------------------------------------- checks


def digest(path: Path) -> str | None:
    """sha256 over a file, or over every file (relative name + bytes) below a folder."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()
    return None


def assert_one_error_line(result: Result, phrases: tuple[str, ...]) -> None:
    assert result.returncode != 0, f"expected failure, got 0\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "error: unexpected" not in lines[0], lines[0]
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), f"{phrase!r} not in {lines[0]!r}"


def files_below(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ---------------------------------------------------------------- the cases (built in bad_input_cases.py)


def _params() -> list:
    return [
        pytest.param(builder, id=name, marks=[pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])
        for name, (builder, xfail) in CASES.items()
    ]


@pytest.mark.parametrize("builder", _params())
def test_bad_input(builder, clnet_cli, shared_data_dir, ct_crop, tiny_model_dir, tmp_path):
    ctx = Ctx(tmp_path, shared_data_dir, ct_crop, tiny_model_dir)
    case = builder(ctx)
    before = {p: digest(p) for p in case.watch}
    result = clnet_cli(case.argv, case.env, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    if case.ok:
        assert result.returncode == 0, result.stderr
        seg = case.out / "segmentation.nii.gz"
        assert seg.is_file() and (case.out / "segmentation.json").is_file()
        if case.expected_size:
            assert sitk.ReadImage(str(seg)).GetSize() == case.expected_size
        assert not [n for n in files_below(case.out) if ".tmp" in n]
    else:
        assert_one_error_line(result, case.phrases)
        assert files_below(case.out) == [] or case.out in case.watch, files_below(case.out)
    for p, h in before.items():
        assert digest(p) == h, f"{p} was modified"
    assert not list(tmp_path.rglob("escaped.txt"))


def test_case_count():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", ["mr_not_ct", "three_slices"])
def test_fork_server_matches_spawn(name, clnet_cli, shared_data_dir, ct_crop, tiny_model_dir, tmp_path):
    """The fork server reports what a fresh ``python -m clnet`` reports (same code, same exit status)."""
    case = CASES[name][0](Ctx(tmp_path, shared_data_dir, ct_crop, tiny_model_dir))
    served = clnet_cli(case.argv, case.env, tmp_path)
    spawned = spawn(case.argv, case.env, tmp_path)
    assert (served.returncode, served.stderr, served.stdout) == (spawned.returncode, spawned.stderr, spawned.stdout)
