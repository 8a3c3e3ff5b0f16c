"""Learn the spleen as a NEW anatomy ("My spleen") on the bundled demo model, from one painted segment.

The demo model's own Spleen channel finds nothing on the example CT (Dice 0). Here the reference
spleen of that CT (TotalSegmentator's prediction, ../shared/data/example_seg_fast_force_split.nii.gz,
value 1) plays the segment a user painted in Slicer: written as a .seg.nrrd, cut in two along z.
The upper slab (the cranial part of the spleen) is held out: never trained on, only scored
(``--validate``). Training runs through ``clnet add-decoder --progress json`` (the same command the
Slicer module runs), on 2 CPU threads. Then the example CT is segmented with the old and the new
model, and every old anatomy's voxels are compared.

    python benchmarks/learn_anatomy.py [--steps 180] [--lr LR] [--fg-fraction F] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
SEGMENT = "Painted spleen"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else float("nan")


def write_painted(labels: sitk.Image, z0: int, z1: int, path: Path) -> None:
    """The spleen of slices [z0, z1) as a one-segment .seg.nrrd (what Slicer would save)."""
    from clnet.catalog import Anatomy
    from clnet.io.seg_nrrd import write_seg_nrrd

    arr = (sitk.GetArrayFromImage(labels) == 1).astype(np.uint8)
    arr[:z0] = 0
    arr[z1:] = 0
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(labels)
    write_seg_nrrd(img[:, :, z0:z1], [Anatomy(1, "Painted_spleen", SEGMENT, "test", None, (157, 108, 162), None)],
                   path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=180)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: add-decoder's)")
    ap.add_argument("--fg-fraction", type=float, default=None, help="foreground patch share (default: add-decoder's)")
    ap.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    ap.add_argument("--held-out", type=float, default=0.35, help="share of the spleen's slices held out (cranial)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "learn_anatomy.md")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from clnet import Segmenter
    from clnet.cli import main as clnet_main
    from clnet.data import example_ct
    from clnet.events import parse_event
    from clnet.registry import BUNDLED_MODELS_DIR

    ref_path = args.shared / "data" / "example_seg_fast_force_split.nii.gz"
    if not ref_path.is_file():
        print(f"needs the example CT's reference labels at {ref_path} (see ../shared/data/README.md)")
        return 2
    ct_path, base = example_ct(), BUNDLED_MODELS_DIR / "demo"
    ct, ref = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(ref_path))
    spleen = sitk.GetArrayFromImage(ref) == 1  # (z, y, x); z grows cranially (RAS file, LPS read)
    zs = np.flatnonzero(spleen.any(axis=(1, 2)))
    split = int(zs[-1] + 1 - round(args.held_out * len(zs)))  # slices >= split: held out
    depth = spleen.shape[0]

    with tempfile.TemporaryDirectory(prefix="learn-bench-") as tmp:
        t = Path(tmp)
        sitk.WriteImage(ct[:, :, :split], str(t / "train_ct.nii.gz"), True)
        sitk.WriteImage(ct[:, :, split:], str(t / "held_ct.nii.gz"), True)
        write_painted(ref, 0, split, t / "train.seg.nrrd")
        write_painted(ref, split, depth, t / "held.seg.nrrd")
        tuning = [*(["--lr", str(args.lr)] if args.lr is not None else []),
                  *(["--fg-fraction", str(args.fg_fraction)] if args.fg_fraction is not None else [])]
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = clnet_main(["add-decoder", "--model", str(base), "--new-anatomy", "My spleen",
                             "--color", "157", "108", "162", "--code", "SCT^78961009^Spleen",
                             "--pair", str(t / "train_ct.nii.gz"), str(t / "train.seg.nrrd"), SEGMENT,
                             "--validate", str(t / "held_ct.nii.gz"), str(t / "held.seg.nrrd"), SEGMENT,
                             "-o", str(t / "new"), "--steps", str(args.steps), *tuning,
                             "--device", "cpu", "--progress", "json", "--work-dir", str(t / "work")])
        wall = time.perf_counter() - t0
        events = [e for e in map(parse_event, out.getvalue().splitlines()) if e]
        if rc != 0:
            print(out.getvalue()[-3000:])
            return rc
        result = events[-1]
        curve = [(e["step"], e["validation_dice"]) for e in events if e.get("stage") == "validate"]
        losses = [e["loss"] for e in events if e.get("stage") == "train"]

        seg = {}
        for name, folder in (("old", base), ("new", t / "new")):
            s = Segmenter(folder, device="cpu")
            t1 = time.perf_counter()
            r = s.segment(str(ct_path), per_decoder=True)
            seg[name] = (sitk.GetArrayFromImage(r.labels), {d: sitk.GetArrayFromImage(i) for d, i in
                                                            r.decoder_labels.items()}, time.perf_counter() - t1)
        (old, old_heads, t_old), (new, new_heads, t_new) = seg["old"], seg["new"]
        mine = new == 1000
        head = new_heads["my_spleen"] > 0  # the new decoder's own output, before the merge with old decoders
        lost = spleen & ~mine & (new > 0)  # reference spleen voxels an old anatomy kept in the merge
        heads_same = all(np.array_equal(old_heads[d], new_heads[d]) for d in old_heads)
        outside_same = bool(np.array_equal(old[~mine], new[~mine]))
        taken = int(np.count_nonzero(mine & (old > 0)))
        added = sum(f.stat().st_size for f in (t / "new").iterdir()) - sum(f.stat().st_size for f in base.iterdir())
        decoder_bytes = (t / "new" / "decoder_my_spleen.safetensors").stat().st_size
        manifest = json.loads((t / "new" / "manifest.json").read_text(encoding="utf-8"))
        used = manifest["decoders"]["my_spleen"]["info"]["provenance"]["config"]
        old_spleen = old == 82  # the demo's own Spleen channel

    rows = [
        (f"steps (batch {used['batch_size']}, patch {'×'.join(map(str, used['patch_size_zyx']))}, frozen encoder, "
         f"{used['optimizer']} lr {used['lr']:g}, {used['fg_fraction']:.0%} foreground patches)", f"{args.steps}"),
        ("wall time of `clnet add-decoder` (prepare, train, validate ×10, verify)", f"{wall:.0f} s"),
        ("final training loss", f"{losses[-1]:.3f} (first step {losses[0]:.3f})"),
        ("Dice of My spleen on the training slab, model grid (`training_dice`)", f"{result['training_dice']:.3f}"),
        ("Dice of My spleen on the held-out slab, model grid (`validation_dice`)", f"{result['validation_dice']:.3f}"),
        ("Dice of the new decoder's own output on the whole CT: training slab / held-out slab",
         f"{dice(head[:split], spleen[:split]):.3f} / {dice(head[split:], spleen[split:]):.3f}"),
        ("Dice on the training slab, full segmentation, input grid",
         f"{dice(mine[:split], spleen[:split]):.3f}"),
        ("Dice on the held-out slab, full segmentation, input grid",
         f"{dice(mine[split:], spleen[split:]):.3f}"),
        ("demo model's own Spleen, whole CT", f"{dice(old_spleen, spleen):.3f}"),
        ("old decoders' own outputs (per-decoder label maps) bit-identical", f"{heads_same}"),
        ("every old label voxel-for-voxel identical outside My spleen's voxels", f"{outside_same}"),
        ("voxels My spleen took over from old labels (confidence merge)", f"{taken}"),
        ("reference spleen voxels an old anatomy kept (confidence merge)", f"{int(lost.sum())} of {int(spleen.sum())}"),
        ("model size added (new decoder file / whole folder)", f"{decoder_bytes:,} / {added:,} bytes"),
        ("segmenting the example CT, old / new model", f"{t_old:.1f} s / {t_new:.1f} s"),
    ]
    text = ["# Learning a new anatomy from one painted segment (benchmarks/learn_anatomy.py)", "",
            f"Example CT (122×101×112, 3 mm); painted segment = reference spleen (value 1 of "
            f"example_seg_fast_force_split.nii.gz); training slab z 0..{split - 1}, held-out slab z {split}..{depth - 1} "
            f"({len(zs) - (split - zs[0])} of the spleen's {len(zs)} slices held out). Base model: bundled `demo`. "
            "2 CPU threads (`torch.set_num_threads(2)`).", "",
            "| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
            "Held-out Dice during training (step: Dice): " + ", ".join(f"{s}: {d:.3f}" for s, d in curve), ""]
    print("\n".join(text))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n", encoding="utf-8")
    (args.out.with_suffix(".json")).write_text(json.dumps({"result": result, "curve": curve, "rows": rows},
                                                          indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
