#!/usr/bin/env python
"""What body-part gating saves on the example CT: tiles run per decoder with and without a scorer.

The model is the official CL-Net layout (9 decoders, 222 outputs, the released body-part windows and
per-anatomy windows, official patch 112 × 96 × 128, 1.5 mm, step 0.8), with random weights. Its widths
are cut to 2 channels in the encoder and 1 in the decoders so the runs fit on a shared 2-core CPU:
which tiles run depends only on the geometry, the windows and the scores, not on the widths. GFLOP are counted for the official-width network
(``_bench_setup.clnet_work_gflops``) from the tiles that really ran.

Scorers compared on the same scan:

- none (``gating=False``): every decoder on every tile;
- the official scorer: bpreg's VGG16 network in the release layout, imported with the model, with
  random weights whose output layer (fc7) is fitted so the example CT scores where bpreg's public look-up
  table puts its landmarks: the top of the femoral heads at 14 and the middle of L1 at 42 (landmarks
  from TotalSegmentator's labels of the scan, ``shared/data``), linear in z between and beyond them;
- clnet's bundled demo scorer (the same model folder without the official network).

    python benchmarks/bpr_gating.py --threads 2 --workdir /tmp/bpr-gating
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_setup import clnet_work_gflops, find_real_ct, official_random_manifest  # noqa: E402

#: bpreg's public look-up table, rounded (``clnet.bodypart.bpreg_synthetic.LANDMARK_POSITIONS``).
ANCHORS = {"femur_end": 14.0, "L1_middle": 42.0}


def anchor_targets(ct: sitk.Image, shared: Path, z_mm: np.ndarray) -> tuple[np.ndarray, dict]:
    """Target scores of the scan's LPS slices: a line in z through the two anchors."""
    from clnet.bodypart import landmarks_from_labels
    from clnet.bodypart.model import orient_lps, slice_z_mm

    names = {n: int(v) for v, n in json.loads((shared / "labels.json").read_text()).items()}
    seg = sitk.ReadImage(str(shared / "example_seg_fast_force_split.nii.gz"))
    femur = landmarks_from_labels(seg, names)["femur_end"]
    lab = sitk.GetArrayViewFromImage(orient_lps(seg))
    rows = np.flatnonzero((lab == names["vertebrae_L1"]).any(axis=(1, 2)))
    l1 = float(np.mean(slice_z_mm(orient_lps(seg))[rows]))
    slope = (ANCHORS["L1_middle"] - ANCHORS["femur_end"]) / (l1 - femur)
    targets = ANCHORS["femur_end"] + slope * (np.asarray(z_mm) - femur)
    return targets, {"femur_end_z_mm": femur, "L1_middle_z_mm": l1, "slope_units_per_mm": slope}


def build_models(workdir: Path, ct_path: Path, shared: Path) -> tuple[Path, Path, dict, object]:
    from clnet.bodypart.bpreg_import import import_bpr
    from clnet.bodypart.bpreg_slices import bpreg_slices
    from clnet.bodypart.bpreg_synthetic import (
        fit_output_layer,
        pooled_features,
        random_state_dict,
        raw_for_scores,
        write_release_folder,
    )
    from clnet.checkpoint import read_manifest, save_model
    from clnet.manifest import BodyPartEntry
    from clnet.model import EncoderConfig
    from clnet.model.config import DecoderConfig
    from clnet.model.factory import random_network

    full = official_random_manifest(quick=False)
    narrow = EncoderConfig(features=(2,) * len(full.encoder.features), kernels=full.encoder.kernels,
                           strides=full.encoder.strides)
    manifest = official_random_manifest(quick=False)
    manifest.name, manifest.encoder = "official-layout-narrow", narrow
    for entry in manifest.decoders.values():
        entry.config = DecoderConfig.default_for(narrow, entry.config.num_classes, 0.5)
    plain = workdir / "model-plain"
    if not (plain / "manifest.json").is_file():
        save_model(random_network(manifest, 0), manifest, plain)
    with_bpr = workdir / "model-official-bpr"
    ct = sitk.ReadImage(str(ct_path))
    prepared = bpreg_slices(ct)
    targets, anchors = anchor_targets(ct, shared, prepared.z_mm)
    if not (with_bpr / "manifest.json").is_file():
        state = random_state_dict(seed=7)
        state = fit_output_layer(state, pooled_features(state, prepared.slices), raw_for_scores(targets))
        scorer, info = import_bpr(write_release_folder(workdir / "release" / "public_bpr_model", state))
        m = read_manifest(plain)
        m.bodypart = BodyPartEntry(scorer.kind, "bodypart_bpreg.safetensors", settings=scorer.settings.to_dict(),
                                   info={**info, "weights": "random, fc7 fitted to anchored positions (bpr_gating.py)"})
        from clnet.checkpoint import load_model

        save_model(load_model(plain).network, m, with_bpr, copy_from=plain, bodypart=scorer.to_bytes())
    return plain, with_bpr, {"anchors": anchors, "targets_range": [float(targets.min()), float(targets.max())]}, full


def run(model: Path, ct: sitk.Image, gating: bool, anatomies: list[str] | None) -> dict:
    from clnet.inference import Segmenter

    seg = Segmenter(model, device="cpu", gating=gating)
    t = time.perf_counter()
    r = seg.segment(ct, anatomies=anatomies, locate=False)
    s = r.settings
    return {"seconds": round(time.perf_counter() - t, 1), "tiles": s["tiles"], "tiles_run": s["tiles_run"],
            "slabs": s["bodypart_gating"]["slabs"], "scorer": s["bodypart_gating"].get("scorer"),
            "warnings": r.warnings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/bpr-gating")
    ap.add_argument("--ct", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="rebuild the models")
    ap.add_argument("--json", default=str(HERE / "results" / "bpr_gating_cpu2.json"))
    ap.add_argument("--md", default=str(HERE / "results" / "bpr_gating_cpu2.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ct_path = find_real_ct(args.ct)
    plain, with_bpr, fit, full = build_models(workdir, ct_path, ct_path.parent)
    ct = sitk.ReadImage(str(ct_path))
    scenarios = {"all anatomies": None}
    scorers = {"none (gating off)": (plain, False), "official bpreg network": (with_bpr, True),
               "clnet bundled demo scorer": (plain, True)}
    results: dict = {}
    for scenario, anatomies in scenarios.items():
        for scorer, (model, gating) in scorers.items():
            r = run(model, ct, gating, anatomies)
            r["gflop_official_widths"] = round(clnet_work_gflops(full, r["tiles_run"]), 1)
            results[f"{scenario} | {scorer}"] = r
            print(scenario, "|", scorer, json.dumps({k: v for k, v in r.items() if k != "warnings"}), flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "ct": str(ct_path), "fit": fit}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    decoders = list(full.decoders)
    head = "| anatomies | scorer | score range | encoder | " + " | ".join(decoders) + " | GFLOP (official widths) | s |"
    lines = [head, "|" + "---|" * (len(decoders) + 6)]
    for key, r in results.items():
        scenario, scorer = key.split(" | ")
        rng = r["scorer"]["score_range"] if r["scorer"] else None
        rng_txt = "–" if not rng else f"{rng[0]:.1f} … {rng[1]:.1f}"
        runs = r["tiles_run"]
        lines.append(f"| {scenario} | {scorer} | {rng_txt} | {runs.get('encoder', 0)} | "
                     + " | ".join(str(runs.get(d, "–")) for d in decoders)
                     + f" | {r['gflop_official_widths']} | {r['seconds']} |")
    text = ("# Body-part gating on the example CT: tiles run per decoder\n\n"
            f"CPU ({meta['machine']}), {meta['threads']} threads, torch {meta['torch']}. Official layout at 1-2 "
            "channels (tile counts as the official network's; seconds are not the official network's); GFLOP for the official widths. The official scorer's "
            f"weights: random, fc7 fitted to {fit['anchors']}.\n\n" + "\n".join(lines) + "\n")
    Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
