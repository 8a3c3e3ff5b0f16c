"""Two-process DDP training (gloo on CPU) through ``torchrun -m clnet train``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clnet.checkpoint import load_model
from clnet.training.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "ds", n_cases=2, shape_zyx=(16, 32, 32))
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "CLNetSegmentation")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clnet",
           "train", "--data", str(data), "--decoder", "organs=liver,spleen", "-o", str(out), "--encoder", "tiny",
           "--spacing", "3", "3", "3", "--patch", "16", "32", "32", "--steps", "3", "--batch-size", "1",
           "--device", "cpu", "--no-eval", "-q", "--checkpoint-every", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    m = load_model(out).manifest
    assert m.provenance["world_size"] == 2
    # Only rank 0 wrote: one model folder, one log with one header.
    log = (tmp_path / "model.work" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and sum(line.startswith("step,") for line in log) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp")]
