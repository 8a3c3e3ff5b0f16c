"""Finish the demo model: measure Dice through the real inference path, write metrics and README.

Dice is measured with ``clnet segment`` (the engine's inference) and ``clnet evaluate`` against the
TotalSegmentator predictions remapped to catalog label values. The weights are copied byte for byte
from the last training stage; only the manifest (metrics, provenance) and README.md are new.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from clnet.bodypart import anatomy_ranges, anatomy_windows, decoder_range, load_default
from clnet.catalog import load_catalog
from clnet.checkpoint import load_model, save_model


def apply_bodypart_windows(ct: Path, seg: Path, labels_json: Path, manifest) -> None:
    """Set each decoder's body-part window and its anatomies' own windows (for subsets) from where
    the anatomies occur in the training scan."""
    catalog = load_catalog()
    scores = load_default().score_slices(sitk.ReadImage(str(ct)))  # one score per LPS slice
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(seg)), "LPS"))
    values = {}
    for value, name in json.loads(labels_json.read_text()).items():
        a = catalog.get(name)
        if a is not None:
            values[a.name] = int(value)
    ranges = anatomy_ranges(scores, labels, values)
    own = anatomy_windows(ranges)
    for entry in manifest.decoders.values():
        w = decoder_range(ranges, entry.anatomies)
        entry.bodypart_range = (round(w[0], 2), round(w[1], 2)) if w else None
        entry.anatomy_bodypart_ranges = {a: (round(own[a][0], 2), round(own[a][1], 2))
                                         for a in entry.anatomies if a in own}


def catalog_reference(seg: Path, labels_json: Path, out: Path) -> Path:
    """The TotalSegmentator label map with its values replaced by catalog label values."""
    names = json.loads(labels_json.read_text())
    catalog = load_catalog()
    img = sitk.ReadImage(str(seg))
    arr = sitk.GetArrayFromImage(img)
    lut = np.zeros(int(arr.max()) + 1, dtype=np.uint8)
    for value, name in names.items():
        a = catalog.get(name)
        if a is not None and int(value) < len(lut):
            lut[int(value)] = a.label
    ref = sitk.GetImageFromArray(lut[arr])
    ref.CopyInformation(img)
    sitk.WriteImage(ref, str(out))
    return out


def segment_and_evaluate(model: Path, ct: Path, ref: Path, out_dir: Path) -> tuple[dict[str, float], list[str]]:
    """Run the CLI exactly as a user would; returns Dice per anatomy the model outputs and the commands."""
    seg_cmd = [sys.executable, "-m", "clnet", "segment", str(ct), "-o", str(out_dir), "--model", str(model), "-q"]
    subprocess.run(seg_cmd, check=True)
    eval_cmd = [sys.executable, "-m", "clnet", "evaluate", str(out_dir / "segmentation.nii.gz"), str(ref), "--json",
                "--no-distances"]
    rows = json.loads(subprocess.run(eval_cmd, check=True, capture_output=True, text=True).stdout)["anatomies"]
    return {r["name"]: round(float(r["dice"]), 4) for r in rows}, [_shown(seg_cmd), _shown(eval_cmd)]


def _shown(cmd: list[str]) -> str:
    """A command as the model card prints it: ``python``, and paths in the repository or beside it
    (../shared) relative to the repository root, so the card names no folder of the build machine."""
    root = Path(__file__).resolve().parents[1]
    out = ["python"]
    for arg in cmd[1:]:
        path = Path(arg)
        if path.is_absolute() and root.parent in path.resolve().parents:
            arg = os.path.relpath(path.resolve(), root)
        out.append(arg)
    return " ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--prune-report", type=Path)
    a = ap.parse_args()

    loaded = load_model(a.model)
    m = loaded.manifest
    catalog = load_catalog()
    # Body-part windows first, so the Dice below is measured with gating on, as users run it.
    apply_bodypart_windows(a.data / "example_ct.nii.gz", a.data / "example_seg_fast_force_split.nii.gz",
                           a.data / "labels.json", m)
    save_model(loaded.network, m, a.out, overwrite=True, copy_from=a.model)
    outputs = {catalog.by_name(n).name for n in m.anatomy_owner()}
    views = {
        "example_ct": (a.data / "example_ct.nii.gz", a.data / "example_seg_fast_force_split.nii.gz",
                       "TotalSegmentator v2 --fast (3 mm) prediction on the training scan itself"),
        "example_ct_sm": (a.data / "example_ct_sm.nii.gz", a.data / "example_seg.nii.gz",
                          "crop z=82..111 of the training scan; reference = TotalSegmentator v2 normal (1.5 mm) prediction"),
    }
    metrics: dict = {"dice_model_grid_training_scans": m.metrics.get("dice_model_grid_training_scans", {})}
    commands = []
    for key, (ct, seg, what) in views.items():
        ref = catalog_reference(seg, a.data / "labels.json", a.work / f"ref_{key}.nii.gz")
        scores, cmds = segment_and_evaluate(a.out, ct, ref, a.work / f"seg_{key}")
        commands += cmds
        per = {n: d for n, d in scores.items() if n in outputs}
        per_decoder = {}
        for dname, e in m.decoders.items():
            vals = [per[n] for n in e.anatomies if n in per]
            per_decoder[dname] = round(float(np.mean(vals)), 4) if vals else None
        metrics[f"dice_{key}"] = {
            "reference": what,
            "mean": round(float(np.mean(list(per.values()))), 4) if per else None,
            "mean_per_decoder": per_decoder,
            "per_anatomy": dict(sorted(per.items())),
        }
    metrics["evaluation_note"] = (
        "Trained AND evaluated on the same single scan; the references are TotalSegmentator predictions, "
        "not manual ground truth. These numbers show that the pipeline works, not how well it generalises."
    )
    metrics["commands"] = commands
    m.metrics = metrics
    m.demo, m.clinical_use = True, False
    m.description = ("CL-Net demonstration model (small encoder, 3 decoders, 3 mm) trained on one abdomen/pelvis "
                     "CT with TotalSegmentator-predicted labels. Demonstration only; not for clinical use.")
    m.provenance.update({
        "training_data": "ONE CT: TotalSegmentator tests/reference_files/example_ct.nii.gz with "
                         "example_seg_fast_force_split.nii.gz (TotalSegmentator v2 --fast predictions, not ground "
                         "truth); Apache-2.0, Wasserthal et al., Radiology: AI 2023",
        "validation": "none held out: Dice is measured on the training scan (and a crop of it)",
        "pipeline": "scripts/train_demo.sh (train → add-decoder ×2 → prune → finalise)",
        "bodypart_ranges": "from the bundled body-part model's scores of the training scan's labelled slices "
                           "(clnet.bodypart.anatomy_ranges + decoder_range, margin 0.25 × extent; each anatomy's "
                           "own window: anatomy_windows, margin 0.25 × its extent, at least 5 units)",
        "total_training_seconds": round(a.seconds, 1),
    })
    save_model(loaded.network, m, a.out, overwrite=True, copy_from=a.model)
    write_readme(a.out, m, a.prune_report.read_text() if a.prune_report and a.prune_report.is_file() else "")
    print(json.dumps({k: v["mean"] for k, v in metrics.items() if isinstance(v, dict) and "mean" in v}, indent=1))
    return 0


def write_readme(out: Path, m, prune_report: str) -> None:
    lines = [
        f"# {m.name}: CL-Net demonstration model",
        "",
        "**Demonstration only — NOT for clinical use.** This model was trained on a single CT scan whose",
        "labels are *predictions of another model* (TotalSegmentator v2 `--fast`), not manual ground truth,",
        "and it is evaluated on that same scan. The Dice values below show that the training, continual",
        "learning, pruning and inference pipeline works end to end; they say nothing about accuracy on new scans.",
        "",
        "- Encoder: small (5 stages, 16→96 channels), 3 mm spacing (fast mode 4.5 mm), patch (48, 64, 64).",
        "- Decoders: `abdomen` trained with the encoder (stage 1); `spine_ribs` and `vessels_muscles` added",
        "  with `clnet add-decoder` on the frozen encoder; `vessels_muscles` then narrowed with `clnet prune`.",
        "- Data: TotalSegmentator `tests/reference_files/example_ct.nii.gz` + `example_seg_fast_force_split.nii.gz`",
        "  (Apache-2.0; Wasserthal et al., Radiology: AI 2023). Re-create with `scripts/train_demo.sh`.",
        "- Body-part windows (decoders are skipped on slices scoring outside them): "
        + ", ".join(f"`{d}` {e.bodypart_range}" for d, e in m.decoders.items())
        + ". They come from one scan that covers T11 to the femurs only, so they are narrow guesses.",
        "",
        "## Dice (via `clnet segment` + `clnet evaluate`)",
        "",
        "| anatomy | decoder | example_ct (training scan) | example_ct_sm (crop of it) |",
        "|---|---|---|---|",
    ]
    a_ct = m.metrics["dice_example_ct"]["per_anatomy"]
    a_sm = m.metrics["dice_example_ct_sm"]["per_anatomy"]
    def fmt(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "–"

    for d, e in m.decoders.items():
        for n in e.anatomies:
            lines.append(f"| {n} | {d} | {fmt(a_ct.get(n))} | {fmt(a_sm.get(n))} |")
    lines += ["", f"Mean: example_ct {m.metrics['dice_example_ct']['mean']}, "
                  f"example_ct_sm {m.metrics['dice_example_ct_sm']['mean']} (anatomies present in the reference).",
              "", "Commands:", "", *[f"    {c}" for c in m.metrics["commands"]]]
    if prune_report:
        lines += ["", "## Pruning report", "", "```", prune_report.strip(), "```"]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
