#!/usr/bin/env python
"""Re-create the bundled demo body-part model (CLNetSegmentation/clnet/bodypart/weights/bpr_demo.safetensors).

Trains the slice-position network self-supervised on the TotalSegmentator example CT (abdomen/pelvis,
T11 to proximal femurs) and places its offset with the femoral-head landmark from the matching labels.
Seeded and single-threaded so that the result is repeatable on the same torch version:

    nice -n 5 python scripts/train_bodypart.py [--data /work/shared/data] [-o FILE] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from clnet.bodypart import DEFAULT_WEIGHTS, BodyPartModel, landmarks_from_labels, train_bodypart
from clnet.checkpoint import sha256_file

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT = "example_ct.nii.gz"
SEG = "example_seg_fast_force_split.nii.gz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with the example CT data")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # One thread: faster than two on a shared 2-core machine, and the sums are always done in the same order.
    torch.set_num_threads(1)

    ct, seg = args.data / CT, args.data / SEG
    names = {name: int(v) for v, name in json.loads((args.data / "labels.json").read_text()).items()}
    image = sitk.ReadImage(str(ct))
    landmarks = landmarks_from_labels(sitk.ReadImage(str(seg)), names)
    print(f"landmarks (world z, mm): {landmarks}")
    info = {
        "description": "CL-Net demo body-part regression model: tiny 2D CNN, self-supervised slice ordering "
                       "with known z distances, offset from landmarks. Trained on ONE abdomen/pelvis CT; "
                       "not reliable outside T11 to proximal femur (see docs/bodypart.md).",
        "trained_on": [{"file": CT, "sha256": sha256_file(ct), "labels_for_landmarks": SEG,
                        "labels_sha256": sha256_file(seg),
                        "source": "TotalSegmentator tests/reference_files (Apache-2.0)",
                        "coverage": "T11 to proximal femurs, 3 mm, 112 slices"}],
        "script": "scripts/train_bodypart.py",
        "torch": torch.__version__,
    }
    t0 = time.time()
    model = train_bodypart([image], steps=args.steps, seed=args.seed, landmarks=[landmarks], info=info,
                           progress=lambda s, loss: print(f"step {s:5d} loss {loss:.3f} ({time.time() - t0:.0f} s)",
                                                          flush=True))
    details = model.score_details(image)
    femur = float(np.interp(landmarks["femur_end"], details.z_mm, details.cleaned))
    model.info["fit"] = {"slope_ratio": round(details.slope_ratio, 4), "outlier_slices": details.outliers,
                         "score_range": [round(float(details.cleaned[0]), 2), round(float(details.cleaned[-1]), 2)],
                         "femur_end_score": round(femur, 2)}
    sha = model.save(args.output)
    BodyPartModel.load(args.output, sha256=sha)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, sha256 {sha}) in {time.time() - t0:.0f} s")
    print(json.dumps(model.info["fit"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
