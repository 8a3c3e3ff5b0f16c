"""Forgetting benchmark: CL-Net (frozen encoder + new decoders) vs. fine-tuning one network.

The same sequence of anatomy groups is learned one group at a time; each step's data labels only
that step's group (as when new datasets arrive). Prints a markdown table of every group's Dice after
each step, and checks that CL-Net's old heads keep bit-identical weights and outputs.

    python benchmarks/continual.py            # real example CT at 6 mm if available, else synthetic
    python benchmarks/continual.py --steps 80 --spacing 4.5

Dice is measured on the scan that was trained on (there is one labelled scan); the point is how much
of an old group's Dice survives later steps, not the absolute value. Labels are TotalSegmentator
predictions, not ground truth.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from clnet.catalog import load_catalog
from clnet.manifest import Normalization, Preprocessing
from clnet.model import CLNet, Decoder, DecoderConfig
from clnet.model.factory import tiny_encoder
from clnet.training.add_decoder import module_digest
from clnet.training.common import decoder_config, pad_value
from clnet.training.datasets import (
    CaseSpec,
    PreparedCase,
    catalog_labels,
    load_dataset,
    prepare_case,
    prepare_cases,
)
from clnet.training.evaluation import dice_per_anatomy, mean_dice
from clnet.training.synthetic import write_synthetic_dataset
from clnet.training.trainer import TrainConfig, fit
from clnet.training.transforms import AugmentConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_GROUPS = {
    "organs": ["liver", "spleen", "kidney_left", "kidney_right"],
    "bones": ["hip_left", "hip_right", "femur_left", "femur_right", "sacrum"],
    "muscles": ["iliopsoas_left", "iliopsoas_right", "autochthon_left", "autochthon_right"],
}
SYNTHETIC_GROUPS = {"organs": ["liver", "spleen"], "kidney": ["kidney_left"], "vessel": ["aorta"]}


def load_case(spacing: float, tmp: Path) -> tuple[PreparedCase, dict[str, list[str]], Preprocessing]:
    norm = Normalization(-1000.0, 1000.0, 0.0, 300.0)
    if (DATA / "example_ct.nii.gz").is_file():
        prep = Preprocessing(spacing_zyx=(spacing,) * 3, patch_size_zyx=(32, 48, 48), normalization=norm)
        cat = load_catalog()
        raw = json.loads((DATA / "labels.json").read_text())
        mapping = {int(k): cat.get(v).name for k, v in raw.items() if cat.get(v) is not None}
        spec = CaseSpec("example_ct", DATA / "example_ct.nii.gz", DATA / "example_seg_fast_force_split.nii.gz", mapping)
        return prepare_case(spec, prep), REAL_GROUPS, prep
    prep = Preprocessing(spacing_zyx=(3.0,) * 3, patch_size_zyx=(16, 32, 32), normalization=norm)
    case = prepare_cases(load_dataset(write_synthetic_dataset(tmp / "syn", n_cases=1)), prep)[0]
    return case, SYNTHETIC_GROUPS, prep


def only_group(case: PreparedCase, labels: list[int]) -> PreparedCase:
    """The scan as a dataset that labels only ``labels`` (everything else unlabelled → 0)."""
    keep = np.isin(case.labels, labels)
    return replace(case, labels=np.where(keep, case.labels, 0).astype(np.uint8), labelled=frozenset(labels))


def group_dice(net: CLNet, head: str, names: list[str], groups: dict[str, list[str]], case: PreparedCase,
               prep: Preprocessing) -> dict[str, float]:
    """Mean Dice per group for a head whose classes are ``names``."""
    scores = dice_per_anatomy(net, head, names, catalog_labels(names), [case], prep.patch_size_zyx, 0.25,
                              pad_value(prep), torch.device("cpu"))
    return {g: mean_dice({n: scores[n] for n in gn if n in scores}) for g, gn in groups.items()
            if any(n in names for n in gn)}


def grow_head(old: Decoder, enc, n_classes: int) -> Decoder:
    """Same decoder with more output classes: old class rows copied, new rows freshly initialised."""
    new = Decoder(enc, DecoderConfig(n_classes, old.config.channels))
    state = new.state_dict()
    for k, v in old.state_dict().items():
        if k.endswith("head.weight"):
            state[k][: v.shape[0]] = v
        else:
            state[k] = v
    new.load_state_dict(state)
    return new


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps per group")
    ap.add_argument("--spacing", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tmp = Path("/tmp") / f"clnet_continual_{int(time.time())}"
    case, groups_raw, prep = load_case(args.spacing, tmp)
    cat = load_catalog()
    groups = {g: [cat.by_name(n).name for n in names] for g, names in groups_raw.items()}
    enc = tiny_encoder((8, 16, 32, 32))
    cfg = TrainConfig(steps=args.steps, batch_size=2, patch_size_zyx=prep.patch_size_zyx, lr=5e-3, warmup_steps=5,
                      ema_decay=0.0, fg_fraction=0.8, seed=args.seed, augment=AugmentConfig(affine_prob=0.0))
    pad = pad_value(prep)
    dev = torch.device("cpu")
    order = list(groups)
    rows: list[tuple[str, str, dict[str, float]]] = []
    t0 = time.perf_counter()

    # (a) CL-Net: encoder + first head, then new heads on the frozen encoder.
    torch.manual_seed(args.seed)
    net = CLNet(enc, {})
    probe = torch.from_numpy(case.image[: prep.patch_size_zyx[0], : prep.patch_size_zyx[1], : prep.patch_size_zyx[2]]
                             .copy())[None, None]
    frozen: dict[str, tuple[str, torch.Tensor]] = {}
    identical = True
    for k, g in enumerate(order):
        names = groups[g]
        net.add_decoder(g, decoder_config(enc, len(names) + 1, 1.0, min_width=8))
        data = only_group(case, catalog_labels(names))
        fit(net, {g: catalog_labels(names)}, [data], cfg, pad, train_encoder=(k == 0), device=dev, progress=False)
        net.eval()
        with torch.inference_mode():
            out = net(probe)
        for old, (digest, ref) in frozen.items():
            identical &= module_digest(net.decoders[old]) == digest and torch.equal(out[old], ref)
        frozen[g] = (module_digest(net.decoders[g]), out[g].clone())
        if k == 0:
            encoder_digest = module_digest(net.encoder)
        else:
            identical &= module_digest(net.encoder) == encoder_digest
        dice: dict[str, float] = {}
        for h in order[: k + 1]:
            dice.update(group_dice(net, h, groups[h], groups, case, prep))
        rows.append(("CL-Net (frozen encoder, new heads)", f"+{g}", dice))

    # (b) Fine-tuning one network: shared encoder + one growing multi-class head, all weights trained.
    torch.manual_seed(args.seed)
    ft = CLNet(enc, {})
    seen: list[str] = []
    for k, g in enumerate(order):
        seen += groups[g]
        dcfg = decoder_config(enc, len(seen) + 1, 1.0, min_width=8)
        head = Decoder(enc, dcfg) if k == 0 else grow_head(ft.decoders["all"], enc, len(seen) + 1)
        ft.decoders = torch.nn.ModuleDict({"all": head})
        data = only_group(case, catalog_labels(groups[g]))
        fit(ft, {"all": catalog_labels(seen)}, [data], copy.deepcopy(cfg), pad, train_encoder=True, device=dev,
            progress=False)
        rows.append(("fine-tune (one growing head)", f"+{g}", group_dice(ft, "all", seen, groups, case, prep)))

    print(f"\nContinual learning on {case.case_id} ({args.steps} steps per group, {args.spacing} mm, tiny encoder; "
          f"trained and evaluated on the same scan, TotalSegmentator-predicted labels)\n")
    print("| method | after step | " + " | ".join(f"Dice {g}" for g in order) + " |")
    print("|---|---|" + "---|" * len(order))
    for method, step, dice in rows:
        cells = [f"{dice[g]:.3f}" if g in dice else "–" for g in order]
        print(f"| {method} | {step} | " + " | ".join(cells) + " |")
    print("\nForgetting (first group's Dice: after its own step → after the last step):")
    for method in dict.fromkeys(r[0] for r in rows):
        mine = [r[2] for r in rows if r[0] == method]
        print(f"- {method}: {mine[0][order[0]]:.3f} → {mine[-1][order[0]]:.3f}")
    print(f"\nCL-Net old heads and encoder bit-identical in weights and outputs after every step: {identical}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    assert identical, "CL-Net changed an old head or the encoder"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
