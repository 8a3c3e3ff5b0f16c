"""`clnet bodypart train` and `clnet bodypart score` (registered by clnet.cli)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bodypart`` command with its ``train`` and ``score`` actions."""
    p = subparsers.add_parser("bodypart", help="body-position score per axial slice (decoder gating)")
    sub = p.add_subparsers(dest="bodypart_command", required=True)

    t = sub.add_parser("train", help="train a body-part model (self-supervised; labels only for calibration)")
    t.add_argument("images", nargs="+", help="CT images (NIfTI, NRRD, MHA or DICOM folders)")
    t.add_argument("--labels", nargs="+", metavar="SEG",
                   help="label maps matching the images (same order), used to find calibration landmarks")
    t.add_argument("--label-names", type=Path, metavar="JSON",
                   help='{"value": "name"} map of the label maps (TotalSegmentator "total" names)')
    t.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.safetensors)")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="CPU threads for training (default 1)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="print the body-position score of every axial slice")
    s.add_argument("image", help="CT image (NIfTI, NRRD, MHA or a DICOM folder)")
    s.add_argument("--model", type=Path,
                   help="model file, or a model folder whose own body-part network to use (e.g. the official "
                        "bpreg network of an imported release; default: the bundled demo model)")
    s.add_argument("--sha256", help="refuse the model file unless it has this sha256")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_score)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ..io import read_image
    from . import train_bodypart
    from .train import landmarks_from_labels

    if args.labels and len(args.labels) != len(args.images):
        raise InputError("Give one --labels file per image.", f"Got {len(args.images)} images, {len(args.labels)} labels.")
    if args.labels and not args.label_names:
        raise InputError("--labels needs --label-names (a JSON map from label value to name).")
    torch.set_num_threads(max(1, args.threads))
    images = [read_image(p).image for p in args.images]
    landmarks = None
    if args.labels:
        try:
            names = {str(n): int(v) for v, n in json.loads(args.label_names.read_text(encoding="utf-8")).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"Cannot read label names from {args.label_names} ({exc}).") from None
        landmarks = [landmarks_from_labels(read_image(p).image, names) for p in args.labels]
        print(f"landmarks (world z, mm): {landmarks}")
    info = {"trained_on": [{"file": Path(p).name} for p in args.images], "script": "clnet bodypart train"}
    model = train_bodypart(images, steps=args.steps, seed=args.seed, landmarks=landmarks, info=info,
                           progress=lambda step, loss: print(f"step {step:5d} loss {loss:.3f}", flush=True))
    sha = model.save(args.output)
    print(f"wrote {args.output} (sha256 {sha})")
    return 0


def _finite(value: float) -> float | None:
    """JSON has no NaN: unknown numbers become null."""
    return round(float(value), 4) if math.isfinite(value) else None


def _scorer(path: Path | None, sha256: str | None):
    """The scorer ``--model`` names: a clnet body-part file, or a model folder's own network."""
    from ..errors import ModelError
    from . import DEFAULT_WEIGHTS, BodyPartModel

    if path is not None and path.is_dir():
        from ..checkpoint import load_model

        loaded = load_model(path, decoders=[])
        if loaded.bodypart is None:
            raise ModelError(f"Model {path} has no body-part network of its own.",
                             "Omit --model to use the bundled one, or import the release with public_bpr_model/.")
        return loaded.bodypart
    return BodyPartModel.load(path or DEFAULT_WEIGHTS, sha256=sha256)


def cmd_score(args: argparse.Namespace) -> int:
    from ..io import read_image

    model = _scorer(args.model, args.sha256)
    details = model.score_details(read_image(args.image).image)
    if args.json:
        print(json.dumps({"z_mm": [round(float(v), 3) for v in details.z_mm],
                          "scores": [_finite(v) for v in details.cleaned],
                          "raw_scores": [_finite(v) for v in details.raw],
                          "slope_ratio": _finite(details.slope_ratio), "reliable": details.reliable,
                          "outlier_slices": details.outliers, "scorer": details.scorer, "problem": details.problem}))
        return 0
    print(f"scorer: {details.scorer}")
    if details.problem:
        print(f"warning: this scorer cannot score the image: {details.problem}")
        return 0
    print(f"{'slice':>5}  {'z_mm':>9}  {'score':>7}  {'raw':>7}")
    for k, (z, c, r) in enumerate(zip(details.z_mm, details.cleaned, details.raw)):
        print(f"{k:5d}  {z:9.2f}  {c:7.2f}  {r:7.2f}")
    print(f"slope ratio (observed / expected) {details.slope_ratio:.2f}; outlier slices {details.outliers}")
    if not details.reliable:
        print("warning: the scores do not follow the body axis as expected; do not trust them for this image")
    return 0
