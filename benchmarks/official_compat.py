#!/usr/bin/env python
"""What official-compatible inference changes: image values, crop box, labels and time (issue 17).

    python benchmarks/official_compat.py --threads 2                 # official-size encoder, quarter-width heads
    python benchmarks/official_compat.py --quick --per-option        # tiny model, one run per option

1. **Resampling.** The real CT (3 mm), cropped to the body, resampled to ``--spacing`` (1.5 mm: the
   spacing the official-layout benchmark model uses) by clnet's linear path, by the official-compatible
   spline (``clnet.inference.spline``), by SimpleITK's B-spline and by ``scipy.ndimage.zoom(order=3,
   mode="nearest", grid_mode=True)``, which is what the official ``skimage.transform.resize(order=3,
   mode="edge")`` calls. Differences to the zoom in HU and after the official CT normalisation
   (fallback statistics: clip to [−995, 1265], mean −187.85, sd 490.7); seconds each.
2. **Body crop.** clnet's box against the official one (voxels, seconds).
3. **Labels.** The same random-weight model in the official layout (official encoder, the nine heads at
   a quarter of their width, patch 112×96×128; ``--quick``: tiny) run by ``Segmenter.segment`` with
   ``official_compat`` off and on: seconds, tiles, voxels whose label differs, Dice per anatomy.
   ``--per-option``: one more run per option alone, against the default.

Random weights give near-tied softmax outputs, so their label changes are a worst case: a trained
model's labels move only where its classes are close.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_setup import medium_ct, official_random_manifest  # noqa: E402
from bench_inference import md_table  # noqa: E402
from bench_precision import agreement  # noqa: E402

#: Output voxels next to the crop's faces left out of the "inside" column.
INNER = 8
OFFICIAL_CT = {"clip_low": -995.0, "clip_high": 1265.0, "mean": -187.853, "sd": 490.705}


def say(text: str = "") -> None:
    print(text, flush=True)


def timed(run):
    t = time.perf_counter()
    out = run()
    return time.perf_counter() - t, out


def normalised(hu: np.ndarray) -> np.ndarray:
    c = OFFICIAL_CT
    return (np.clip(hu, c["clip_low"], c["clip_high"]) - c["mean"]) / c["sd"]


def resampling(ct: sitk.Image, spacing: float) -> tuple[list, dict]:
    """Section 1: every method on the body crop of the CT, against scipy's order-3 zoom."""
    from clnet.inference.preprocessing import body_box, oriented, resample_into, spacing_grid
    from clnet.inference.spline import resample_spline, separate_axis

    view = oriented(ct, "LPS")
    arr = view.array_view(ct)
    (x0, y0, z0), (nx, ny, nz) = body_box(arr, view.geometry.spacing, -200.0)
    crop = np.ascontiguousarray(arr[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx]).astype(np.float32)
    grid = spacing_grid(view.geometry.region((x0, y0, z0), (nx, ny, nz)), (spacing,) * 3)
    shape_out = grid.GetSize()[::-1]
    spacing_in = view.geometry.spacing[::-1]
    # The official call: skimage resize(order=3, mode="edge", anti_aliasing=False) = this zoom; its
    # voxel i samples (i + ½)·in/out − ½, ours (i + ½)·spacing_out/spacing_in − ½.
    t_zoom, zoom = timed(lambda: ndimage.zoom(crop.astype(np.float64), [o / i for o, i in zip(shape_out, crop.shape)],
                                              order=3, mode="nearest", grid_mode=True))
    grid_offset = max(abs((n_in / n_out) - (spacing / s_in)) * (n_out - 0.5)
                      for n_in, n_out, s_in in zip(crop.shape, shape_out, spacing_in))
    crop_img = sitk.GetImageFromArray(crop)
    crop_img.SetSpacing(view.geometry.spacing)
    crop_img.SetDirection(view.geometry.direction)
    crop_img.SetOrigin(tuple(view.geometry.point((x0, y0, z0)).tolist()))
    methods = {
        "clnet linear (SimpleITK, default)": lambda: resample_into(ct, grid, default_value=-1024.0),
        "official-compatible spline (clnet.inference.spline)": lambda: resample_spline(
            crop, spacing_in, shape_out, grid.GetSpacing()[::-1]),
        "SimpleITK B-spline (order 3)": lambda: sitk.GetArrayFromImage(sitk.Resample(
            crop_img, grid, sitk.Transform(), sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)),
    }
    rows, record = [], {"crop_zyx": list(crop.shape), "grid_zyx": list(shape_out), "spacing_in_zyx": list(spacing_in),
                        "separate_axis": separate_axis(spacing_in, (spacing,) * 3),
                        "zoom_grid_offset_voxels": grid_offset, "scipy_zoom_s": t_zoom, "methods": {}}
    for name, run in methods.items():
        seconds, out = timed(run)
        diff_hu = np.abs(out.astype(np.float64) - zoom)
        diff_norm = np.abs(normalised(out.astype(np.float64)) - normalised(zoom))
        inner = tuple(slice(INNER, -INNER) for _ in range(3))  # boundary handling differs only near the faces
        rec = {"max_hu": float(diff_hu.max()), "mean_hu": float(diff_hu.mean()),
               "max_norm": float(diff_norm.max()), "mean_norm": float(diff_norm.mean()),
               "max_hu_inside": float(diff_hu[inner].max()), "seconds": seconds}
        record["methods"][name] = rec
        rows.append([name, rec["max_hu"], rec["mean_hu"], rec["max_norm"], rec["mean_norm"], rec["max_hu_inside"],
                     seconds])
    rows.append(["scipy.ndimage.zoom order 3 (the reference)", 0.0, 0.0, 0.0, 0.0, 0.0, t_zoom])
    return rows, record


def crop_boxes(cts: dict[str, sitk.Image], patch) -> tuple[list, dict]:
    """Section 2: clnet's body box against the official one, per scan."""
    from clnet.inference.official_crop import official_body_box
    from clnet.inference.preprocessing import body_box, oriented

    rows, record = [], {}
    for scan, ct in cts.items():
        view = oriented(ct, "LPS")
        arr = view.array_view(ct)
        for name, run in (("clnet (largest region > −200 HU, 10 mm)",
                           lambda: body_box(arr, view.geometry.spacing, -200.0)),  # noqa: B023 - run at once
                          ("official (2-D opening, patch/4 margin)", lambda: official_body_box(arr, patch))):  # noqa: B023
            seconds, (start, extent) = timed(run)
            record[f"{scan}: {name}"] = {"start_xyz": start, "size_xyz": extent, "seconds": seconds}
            rows.append([scan, name, f"{start} + {extent}", int(np.prod(extent)), seconds])
    return rows, record


def label_runs(ct: sitk.Image, model_dir: Path, per_option: bool) -> tuple[list, dict]:
    """Section 3: the Segmenter with official_compat off, on, and (optionally) one option at a time."""
    from clnet.inference import Segmenter
    from clnet.manifest import COMPAT_CHOICES, OfficialCompat

    seg = Segmenter(model_dir, device="cpu")
    runs = {"clnet defaults": OfficialCompat(), "official-compatible (all options)": OfficialCompat.official()}
    if per_option:
        for option, (_, official) in COMPAT_CHOICES.items():
            runs[f"only {option} = {official}"] = replace(OfficialCompat(), **{option: official})
    rows, record, base = [], {}, None
    for name, compat in runs.items():
        seg.manifest.compat = compat  # the model's own default, as import-official records it
        seconds, result = timed(lambda: seg.segment(ct, force=True))
        labels = sitk.GetArrayFromImage(result.labels)
        rec = {"seconds": seconds, "timings": result.timings, "tiles_run": result.settings["tiles_run"],
               "official_compat": result.settings["official_compat"]}
        if base is None:
            base = labels
        else:
            rec["agreement"] = agreement(base, labels)
        record[name] = rec
        a = rec.get("agreement")
        rows.append([name, seconds, result.timings.get("prepare", 0.0), result.timings.get("network", 0.0),
                     result.settings["tiles_run"].get("encoder", 0),
                     1.0 if a is None else 1.0 - a["voxels_changed"] / labels.size,
                     "–" if a is None else a["changed_of_foreground"],
                     "–" if a is None else a["dice_median"], "–" if a is None else a["dice_min"],
                     "–" if a is None else a["labels"]])
    return rows, record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model (patch 32×64×64, 4.5 mm) for a check")
    p.add_argument("--per-option", action="store_true", help="also one run per option alone")
    p.add_argument("--no-labels", dest="labels", action="store_false", help="sections 1 and 2 only")
    p.add_argument("--spacing", type=float, default=1.5, help="target spacing of the resampling comparison (mm)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/clnet-bench"))
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path, help="also write the printed tables to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from clnet.data import example_ct
    from clnet.model.factory import save_random_model

    ct = sitk.ReadImage(str(example_ct()))
    manifest = official_random_manifest(args.quick, width_scale=0.25)
    model_dir = args.workdir / "models" / f"{manifest.name}-compat"
    if not (model_dir / "manifest.json").is_file():
        save_random_model(model_dir, manifest, seed=0)
    patch = manifest.preprocessing.patch_size_zyx
    out: list[str] = []

    def show(text: str = "") -> None:
        say(text)
        out.append(text)

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "model": manifest.name,
            "ct": f"{ct.GetSize()} voxels at {ct.GetSpacing()} mm", "load_average_start": os.getloadavg()}
    show(f"# Official-compatible inference ({meta['machine']}, {meta['threads']} torch threads, "
         f"load average {meta['load_average_start'][0]:.1f} at start)\n")
    rows, res = resampling(ct, args.spacing)
    show(f"## Resampling the example CT ({res['crop_zyx']} body crop, {res['spacing_in_zyx']} mm) to {args.spacing} mm "
         f"({res['grid_zyx']}); separate-z axis: {res['separate_axis']}; zoom grid vs clnet grid: "
         f"{res['zoom_grid_offset_voxels']:.3g} voxels apart at most\n")
    show(md_table(["method", "max |Δ| HU", "mean |Δ| HU", "max |Δ| normalised", "mean |Δ| normalised",
                   f"max |Δ| HU ≥ {INNER} voxels inside", "s"], rows))
    medium = sitk.ReadImage(str(medium_ct(example_ct(), args.workdir)))
    rows, crop = crop_boxes({f"example CT {ct.GetSize()}": ct, f"its 512² version {medium.GetSize()}": medium}, patch)
    del medium
    show(f"\n## Body crop (patch {list(patch)} as the official plans' patch)\n")
    show(md_table(["scan", "crop", "start + size (x, y, z)", "voxels", "s"], rows))
    labels: dict = {}
    if args.labels:
        rows, labels = label_runs(ct, model_dir, args.per_option)
        show(f"\n## Labels: {manifest.name} (random weights) on the example CT, official_compat off vs on\n")
        show(md_table(["run", "s", "prepare s", "network s", "encoder tiles", "voxels equal", "changed of foreground",
                       "Dice median", "Dice lowest", "anatomies ≥ 100 voxels"], rows))
    meta["load_average_end"] = os.getloadavg()
    show(f"\nload average at the end: {meta['load_average_end'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "resampling": res, "crop": crop, "labels": labels}, indent=1,
                                        default=str))
    if args.md:
        args.md.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
