#!/usr/bin/env python
"""What the coarse localisation pass saves a trained model, measured with the official-size network.

Random weights label the whole body, so their coarse pass finds no smaller box. Here the coarse pass
still runs (and is timed) with the random network, but the box it hands on is replaced by the box of
the anatomy in a reference label map (TotalSegmentator's prediction for the example CT in
``shared/data``): what a trained locator that finds the anatomy would hand on. The normal pass then
really runs on that box. Printed per anatomy: tiles and seconds without the pass, with it, and
against the full anatomy set.

    python benchmarks/bench_locate.py --threads 2 --workdir /tmp/clnet-bench
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_setup import find_real_ct, median_run, medium_ct, prepare_model  # noqa: E402
from bench_inference import md_table  # noqa: E402

# Catalog name → label name in shared/data/labels.json (TotalSegmentator v1 names).
REFERENCE_NAMES = {"Liver": "liver", "Spleen": "spleen", "Kidney_L": "kidney_left", "UrinaryBladder": "urinary_bladder"}


def reference_corners(shared: Path, name: str):
    """World corners of ``name`` in the reference label map of the example CT."""
    import numpy as np
    from clnet.inference.locate import labelled_corners

    labels = json.loads((shared / "labels.json").read_text())
    value = next(int(k) for k, v in labels.items() if v == REFERENCE_NAMES[name])
    ref = sitk.ReadImage(str(shared / "example_seg_fast_force_split.nii.gz"))
    mask = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(ref) == value).astype(np.uint8))
    mask.CopyInformation(ref)
    return labelled_corners(mask)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--anatomies", nargs="+", default=["Liver", "Spleen", "UrinaryBladder"],
                   choices=sorted(REFERENCE_NAMES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ct", help="the real CT (default: shared/data/example_ct.nii.gz)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/clnet-bench"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import clnet.inference.segmenter as segmenter_module
    from clnet import Segmenter

    real_ct = find_real_ct(args.ct)
    ct = medium_ct(real_ct, args.workdir)
    seg = Segmenter(prepare_model("official-pruned", False, args.workdir), device="cpu")
    real_corners = segmenter_module.labelled_corners
    oracle = {"corners": None}

    def reference_box(labels: sitk.Image):
        real_corners(labels)  # its (small) cost stays in the timing
        return oracle["corners"]

    segmenter_module.labelled_corners = reference_box

    def timed(**kwargs) -> tuple[float, dict]:
        seconds, result = median_run(lambda: seg.segment(str(ct), **kwargs), args.repeats)
        return seconds, result.settings

    full_s, full = timed()
    rows, out = [], []
    for name in args.anatomies:
        oracle["corners"] = reference_corners(real_ct.parent, name)
        off_s, off = timed(anatomies=[name], locate=False)
        on_s, on = timed(anatomies=[name], locate=True)
        coarse = on["locate"]["tiles_run"].get("encoder", 0)
        rec = {"anatomy": name, "tiles_without": off["tiles_run"]["encoder"], "coarse_tiles": coarse,
               "tiles_with": on["tiles_run"]["encoder"], "region_zyx": on["locate"]["regions"][0],
               "seconds_without": round(off_s, 2), "seconds_with": round(on_s, 2), "full_set_s": round(full_s, 2)}
        out.append(rec)
        rows.append([name, rec["tiles_without"], f"{coarse} + {rec['tiles_with']}", off_s, on_s,
                     f"{100 * off_s / full_s:.1f} %", f"{100 * on_s / full_s:.1f} %"])
    print(f"# Coarse pass with a reference box: official-pruned, {ct.name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); full set {full_s:.1f} s on {full['tiles_run']['encoder']} tiles")
    print()
    print(md_table(["anatomy", "tiles without", "tiles with (coarse + normal)", "s without", "s with",
                    "of full set, without", "of full set, with"], rows))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
