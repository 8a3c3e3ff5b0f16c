"""Benchmark `clnet batch`: cases per hour, sequential vs read-ahead (prefetch) vs local Ray.

Cases are copies (or crops, with --crop) of the real example CT written to a temp folder. By
default the model is a tiny random one (plumbing cost, not a real model's network time); pass
--model DIR to measure a real model. Prints a markdown table and writes the numbers as JSON.

    python benchmarks/bench_batch.py --n 20 --json bench_batch.json
    python benchmarks/bench_batch.py --n 3 --crop 64 56 40 --modes sequential prefetch   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch
from clnet.batch import run_batch
from clnet.batch.progress import NoProgress

EXAMPLE_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "example_ct.nii.gz"
MODES = {"sequential": {"prefetch": 0}, "prefetch": {"prefetch": 2}, "ray": {"ray": True}}


class Clock(NoProgress):
    """Notes when each case finishes, for the steady-state rate (after model load / Ray start)."""

    def __init__(self) -> None:
        self.finished_at: list[float] = []

    def finished(self, record) -> None:
        if record["status"] != "retrying":
            self.finished_at.append(time.perf_counter())


def tiny_model(folder: Path) -> Path:
    """The same random tiny model the tests use (3 mm, 32×64×64 patch, two decoders)."""
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder

    prep = Preprocessing(spacing_zyx=(3.0, 3.0, 3.0), fast_spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0), overlap=0.25)
    manifest = build_manifest("tiny-random", tiny_encoder(), {"abdomen": ["Liver", "Spleen", "Kidney_L", "Kidney_R"],
                                                              "spine": ["Bone_Vert_L1", "Bone_Vert_L2", "Liver"]}, prep)
    return save_random_model(folder / "tiny", manifest, seed=3)


def make_cases(source: Path, folder: Path, n: int, crop: list[int] | None) -> list[Path]:
    """n case files: byte copies of ``source``, or crops of it (xyz size) at shifting z offsets."""
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(source)) if crop else None
    paths = []
    for i in range(n):
        path = folder / f"case{i:04d}.nii.gz"
        if image is None:
            shutil.copyfile(source, path)
        else:
            size = image.GetSize()
            # Shift along z only: a crop from the corner keeps some air, which the CT check wants.
            start = [0, 0, (i * 7) % max(1, size[2] - crop[2] + 1)]
            sitk.WriteImage(image[tuple(slice(a, a + c) for a, c in zip(start, crop))], str(path))
        paths.append(path)
    return paths


def measure(mode: str, cases: list[Path], out: Path, args: argparse.Namespace, model: Path) -> dict:
    clock = Clock()
    start = time.perf_counter()
    summary = run_batch(cases, out, model=str(model), device=args.device, resume=False, progress=clock,
                        fast=args.fast, ray_cpus_per_worker=args.ray_cpus_per_worker, **MODES[mode])
    wall = time.perf_counter() - start
    done = clock.finished_at
    steady = (len(done) - 1) / (done[-1] - done[0]) * 3600 if len(done) > 1 and done[-1] > done[0] else None
    return {
        "mode": mode, "cases": len(cases), "ok": summary.counts["ok"], "failed": summary.counts["failed"],
        "wall_s": round(wall, 2), "startup_s": round(done[0] - start, 2) if done else None,
        "cases_per_hour": round(len(cases) / wall * 3600, 1),
        "steady_cases_per_hour": round(steady, 1) if steady else None,
        "errors": {r["id"]: r["error"] for r in summary.failed},
    }


def table(rows: list[dict]) -> str:
    lines = ["| mode | cases | ok | wall s | until 1st case s | cases/h | steady cases/h |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['cases']} | {r['ok']} | {r['wall_s']} | {r['startup_s']} | "
                     f"{r['cases_per_hour']} | {r['steady_cases_per_hour'] or '-'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="number of cases (default 8)")
    p.add_argument("--model", type=Path, help="model folder (default: a tiny random model)")
    p.add_argument("--source", type=Path, default=EXAMPLE_CT, help="CT the cases are made from")
    p.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), help="crop size instead of full copies")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--ray-cpus-per-worker", type=int, help="default: all CPUs for one worker")
    p.add_argument("--json", type=Path, default=Path("bench_batch.json"), help="where to write the results")
    args = p.parse_args()
    if args.ray_cpus_per_worker is None:
        args.ray_cpus_per_worker = os.cpu_count()  # same CPU share as the single local process

    with tempfile.TemporaryDirectory(prefix="clnet-bench-batch-") as tmp:
        tmp = Path(tmp)
        model = args.model or tiny_model(tmp)
        cases = make_cases(args.source, tmp / "cases", args.n, args.crop)
        rows = []
        for mode in args.modes:
            rows.append(measure(mode, cases, tmp / f"out-{mode}", args, model))
            print(f"{mode}: {rows[-1]['wall_s']} s", flush=True)
            for cid, error in rows[-1]["errors"].items():
                print(f"  failed {cid}: {error}")
    print()
    print(table(rows))
    report = {
        "rows": rows,
        "model": str(args.model) if args.model else "tiny random (benchmarks/bench_batch.py)",
        "source": str(args.source), "crop": args.crop, "fast": args.fast, "device": args.device,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "load_average": os.getloadavg(),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
