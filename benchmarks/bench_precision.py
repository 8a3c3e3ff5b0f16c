#!/usr/bin/env python
"""What bf16 arithmetic changes on the CPU: time and labels of float32 against bf16, one model, one CT.

    python benchmarks/bench_precision.py --threads 2                        # the demo model, real CT
    python benchmarks/bench_precision.py --model official-pruned --size medium --anatomy Liver --no-locate

Both runs go through ``Segmenter.segment`` with ``precision="float32"`` and ``"bf16"``; warm-up
excluded, median of ``--repeats``. Printed: seconds, the share of voxels whose label differs, and the
Dice between the two label maps per anatomy present in either (median, mean, lowest; labels under
``SMALL_VOXELS`` voxels are listed apart). Needs a CPU with native bf16 (AVX512-BF16 or AMX);
elsewhere the engine refuses bf16 and so does this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_setup import find_real_ct, median_run, medium_ct, prepare_model  # noqa: E402
from bench_inference import md_table  # noqa: E402

#: Labels smaller than this (in either map) are listed apart: a handful of voxels flipping is Dice 0.
SMALL_VOXELS = 100


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Voxel and per-label agreement between two label maps of the same grid."""
    from clnet.io.evaluate import dice_per_label

    dice = dice_per_label(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b))
    n = max(int(a.max(initial=0)), int(b.max(initial=0))) + 1
    size = np.maximum(np.bincount(a.ravel(), minlength=n), np.bincount(b.ravel(), minlength=n))
    foreground = (a > 0) | (b > 0)
    changed = int(np.count_nonzero(a != b))
    values = sorted(v for k, v in dice.items() if size[k] >= SMALL_VOXELS)
    small = {str(k): {"dice": round(v, 4), "voxels": int(size[k])} for k, v in dice.items() if size[k] < SMALL_VOXELS}
    return {
        "voxels_changed": changed,
        "changed_of_foreground": changed / max(1, int(np.count_nonzero(foreground))),
        "labels": len(values),
        "dice_median": statistics.median(values) if values else None,
        "dice_mean": statistics.fmean(values) if values else None,
        "dice_min": values[0] if values else None,
        "small_labels": small,
        "dice": {str(k): round(v, 4) for k, v in dice.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="demo (default), official-pruned, official-random or a folder")
    p.add_argument("--size", choices=["small", "medium"], default="small",
                   help="small: the real CT as it is; medium: 512×512×224 at 1.5 mm")
    p.add_argument("--anatomy", nargs="*", help="a subset (default: the full set)")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--no-locate", dest="locate", action="store_false", default=None,
                   help="no coarse pass for a subset (random weights find no smaller box with it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ct", help="the real CT (default: shared/data/example_ct.nii.gz)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/clnet-bench"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from clnet.inference.device import cpu_has_bf16

    if not cpu_has_bf16():
        sys.exit("bench_precision: this CPU has no native bf16 (AVX512-BF16 or AMX); nothing to compare.")
    from clnet import Segmenter

    real_ct = find_real_ct(args.ct)
    ct = medium_ct(real_ct, args.workdir) if args.size == "medium" else real_ct
    folder = prepare_model(args.model, False, args.workdir)
    runs: dict[str, tuple[float, np.ndarray]] = {}
    kwargs = {"anatomies": args.anatomy or None, "fast": args.fast, "locate": args.locate}
    for precision in ("float32", "bf16"):
        seg = Segmenter(folder, device="cpu", precision=precision)
        seconds, result = median_run(partial(seg.segment, str(ct), **kwargs), args.repeats)
        runs[precision] = (seconds, result.array().copy())
    (t32, a), (t16, b) = runs["float32"], runs["bf16"]
    agree = agreement(a, b)

    def num(v):
        return "–" if v is None else round(v, 3)

    job = "full set" if not args.anatomy else ", ".join(args.anatomy)
    print(f"# float32 against bf16: {Path(folder).name}, {Path(ct).name} ({job}, {'fast' if args.fast else 'normal'} "
          f"mode), torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    print()
    print(md_table(["float32 s", "bf16 s", "speed-up", "voxels changed", "of the foreground",
                    f"labels ≥ {SMALL_VOXELS} voxels", "Dice bf16 vs float32: median", "mean", "lowest"],
                   [[t32, t16, f"{t32 / t16:.2f}×", agree["voxels_changed"],
                     f"{100 * agree['changed_of_foreground']:.2f} %", agree["labels"],
                     num(agree["dice_median"]), num(agree["dice_mean"]), num(agree["dice_min"])]]))
    if agree["small_labels"]:
        print()
        print(f"Labels under {SMALL_VOXELS} voxels (label: Dice, voxels): "
              + ", ".join(f"{k}: {v['dice']}, {v['voxels']}" for k, v in agree["small_labels"].items()))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "model": Path(folder).name, "ct": Path(ct).name, "job": job,
                                         "fast": args.fast, "float32_s": round(t32, 3), "bf16_s": round(t16, 3),
                                         **agree}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
