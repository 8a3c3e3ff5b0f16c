"""``clnet train``, ``clnet add-decoder`` and ``clnet prune`` (plugged into ``clnet.cli``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ClnetError

# The training code (torch, monai) is imported inside the handlers, so `clnet train --help` is instant.


def _optim_args(p: argparse.ArgumentParser, steps: int, lr: float, data_required: bool = True,
                fg_fraction: float = 0.67) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=2, help="patches per step and process (default 2)")
    g.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="training patch (default: the model's patch size / 64 96 96)")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--weight-decay", type=float, default=3e-5)
    g.add_argument("--schedule", choices=["poly", "cosine"], default="poly")
    g.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    g.add_argument("--grad-clip", type=float, default=12.0, help="max gradient norm (0: off)")
    g.add_argument("--no-deep-supervision", action="store_true")
    g.add_argument("--ema-decay", type=float, default=0.99, help="EMA of weights, saved model uses it (0: off)")
    g.add_argument("--fg-fraction", type=float, default=fg_fraction,
                   help=f"share of patches centred on foreground (default {fg_fraction})")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--rotate", type=float, default=10.0, help="max rotation in degrees (0: off)")
    g.add_argument("--scale", type=float, default=0.1, help="max ± scaling (0: off)")
    g.add_argument("--flip-axes", type=int, nargs="*", default=[],
                   help="random flips along these axes (0=z 1=y 2=x); x swaps left and right labels!")
    r = p.add_argument_group("data and run")
    r.add_argument("--data", required=data_required, help="nnU-Net dataset folder or CSV (image,label[,label_map])")
    r.add_argument("--label-map", help="JSON value→anatomy map for CSV rows without their own")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--work-dir", help="checkpoints, logs and cache (default: OUTPUT.work beside -o)")
    r.add_argument("--cache-dir", help="where preprocessed volumes are cached (default: WORK/cache)")
    r.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in the work folder")
    r.add_argument("--no-eval", action="store_true", help="skip the Dice evaluation on the training scans")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace, default_patch):
    from .trainer import TrainConfig
    from .transforms import AugmentConfig

    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, patch_size_zyx=tuple(args.patch or default_patch),
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup, grad_clip=args.grad_clip, deep_supervision=not args.no_deep_supervision,
        ema_decay=args.ema_decay, fg_fraction=args.fg_fraction, seed=args.seed, deterministic=args.deterministic,
        amp=not args.no_amp, checkpoint_every=args.checkpoint_every,
        augment=AugmentConfig(rotate_deg=args.rotate, scale=args.scale, flip_axes=tuple(args.flip_axes)),
    )


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from .common import parse_decoder_spec
    from .stage1 import train_new_model

    _setup_logging()
    decoders = dict(parse_decoder_spec(s) for s in args.decoder)
    if len(decoders) != len(args.decoder):
        raise ClnetError("Two --decoder options use the same name.")
    manifest = train_new_model(
        args.data, decoders, args.output, _config(args, (64, 96, 96)), encoder=args.encoder,
        width_scale=args.decoder_width, spacing_zyx=args.spacing, fast_spacing_zyx=args.fast_spacing,
        label_map=args.label_map, device=args.device, work_dir=args.work_dir, cache_dir=args.cache_dir,
        resume=not args.no_resume, name=args.name, description=args.description or "",
        demo=not args.not_demo, clinical_use=args.clinical_use, evaluate=not args.no_eval,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    if manifest is not None:
        _print_summary(manifest, args.output)
    return 0


def cmd_add_decoder(args: argparse.Namespace) -> int:
    import time

    from ..manifest import read_manifest
    from ..registry import resolve_model, user_models_dir
    from . import learn
    from .add_decoder import NewAnatomy, add_decoder
    from .common import split_names

    json_mode = args.progress == "json"
    events = None
    if json_mode:
        from ..cli import _events

        events = _events(args)  # "hello" goes out before anything can fail
    _setup_logging()
    t0 = time.perf_counter()
    if not args.anatomies and not args.new_anatomy:
        raise ClnetError("Say what the decoder learns.", "Pass --anatomies NAME ... and/or --new-anatomy NAME.")
    if (args.color or args.code) and not args.new_anatomy:
        raise ClnetError("--color and --code describe a --new-anatomy.", "Add --new-anatomy NAME.")
    learn.check_output_choice(args.output, args.install, args.set_default)
    model_dir = resolve_model(args.model)
    base = read_manifest(model_dir)
    if args.install:
        learn.check_install_name(args.install, base, model_dir, args.overwrite)
    anatomies = split_names(args.anatomies or [])
    name = args.name or learn.default_decoder_name(args.new_anatomy or "_".join(anatomies), list(base.decoders))
    new = NewAnatomy(args.new_anatomy, tuple(args.color) if args.color else None, args.code) if args.new_anatomy else None

    def report(stage: str, fraction: float, **fields) -> None:
        if events is not None:
            events.progress(stage, fraction, **fields)

    if args.install:
        parent = user_models_dir()
        learn.remove_stale_staging(parent)
        staging = learn.Staging.beside(parent, args.install)
        output = None
        work_dir = args.work_dir or staging.root / "work"
    else:
        output = Path(args.output).expanduser()
        learn.check_not_base(output, model_dir)
        if output.exists() and not args.overwrite:
            raise ClnetError(f"{output} already exists.", "Choose another -o folder or pass --overwrite.")
        staging = learn.Staging.beside(output.parent, output.name)
        work_dir = args.work_dir or output.parent / f"{output.name}.work"
    try:
        manifest = add_decoder(
            model_dir, name, args.data, anatomies, staging.model, _config(args, base.preprocessing.patch_size_zyx),
            width_scale=args.decoder_width, label_map=args.label_map, device=args.device, work_dir=work_dir,
            cache_dir=args.cache_dir, resume=not args.no_resume, evaluate=not args.no_eval, overwrite=False,
            progress=not (args.quiet or json_mode), pairs=args.pair, new_anatomy=new, validate=args.validate,
            model_name=args.install or (output.name if output is not None else None), report=report,
        )
        if manifest is None:  # another DDP rank: rank 0 publishes
            return 0
        report("install", 0.0)
        target = learn.publish(staging, output, args.install, args.overwrite, args.set_default)
        report("install", 1.0)
    finally:
        staging.remove()
    result = learn.result_fields(manifest, name, target, args.install, time.perf_counter() - t0)
    if events is not None:
        events.result(**result)
    elif not args.quiet:
        for a in result["anatomies"]:
            what = f"replaces decoder {a['replaces']}'s output" if a["replaces"] else "new to this model"
            print(f"{a['name']} (label {a['label']}): {what}")
        if result["validation_dice"] is not None:
            print(f"held-out Dice {result['validation_dice']:.3f}")
        print(f"verified: encoder and {len(manifest.decoders) - 1} existing decoder file(s) are byte-identical "
              f"to {model_dir} and give identical outputs")
        _print_summary(manifest, target)
        if args.install:
            print(f"installed as {args.install!r}" + (" (now the default model)" if args.set_default else "") +
                  f"; the base model {base.name!r} stays installed")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..checkpoint import read_manifest
    from .prune import PruneConfig, prune_decoder

    _setup_logging()
    patch = read_manifest(args.model).preprocessing.patch_size_zyx
    pc = PruneConfig(max_dice_drop=args.max_dice_drop, rounds=args.rounds, fraction=args.fraction,
                     min_channels=args.min_channels, rewind=args.rewind)
    report = prune_decoder(args.model, args.decoder, args.data, args.output, _config(args, patch), pc,
                           label_map=args.label_map, device=args.device, work_dir=args.work_dir,
                           cache_dir=args.cache_dir, overwrite=args.overwrite, progress=not args.quiet)
    print(report)
    return 0


def _print_summary(manifest, output) -> None:
    dice = manifest.metrics.get("dice_model_grid_training_scans", {})
    for d, e in manifest.decoders.items():
        m = dice.get(d, {}).get("mean")
        extra = f", training-scan Dice {m:.3f}" if m is not None else ""
        print(f"  {d}: {len(e.anatomies)} anatomies{extra}")
    print(f"wrote {output}")


def register(sub) -> None:
    """Add the training subcommands to ``clnet``'s parser."""
    t = sub.add_parser("train", help="train the general encoder and first decoder(s) (stage 1)",
                       description="Train a new CL-Net: general encoder + the given decoders.")
    t.add_argument("--decoder", action="append", required=True, metavar="NAME=ANAT1,ANAT2,...",
                   help="a decoder and its anatomies in output order (repeatable; NAME=@file reads a list)")
    t.add_argument("-o", "--output", required=True, help="model folder to write")
    t.add_argument("--encoder", choices=["tiny", "small", "official"], default="small")
    t.add_argument("--decoder-width", type=float, default=0.5, help="decoder width relative to the encoder")
    t.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], metavar=("Z", "Y", "X"))
    t.add_argument("--fast-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="spacing of --fast mode")
    t.add_argument("--name", help="model name (default: the output folder's name)")
    t.add_argument("--description")
    t.add_argument("--not-demo", action="store_true", help="do not flag the model as a demonstration")
    t.add_argument("--clinical-use", action="store_true", help="flag the model as validated for clinical use")
    _optim_args(t, steps=1000, lr=2e-3)
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("add-decoder", help="train a new decoder on a model's frozen encoder",
                       description="Continual learning: the encoder and existing decoders stay byte-identical. "
                                   "Learns a catalog anatomy the model lacks, corrects one it has (the new "
                                   "decoder replaces the old one's output for it), or a new anatomy.")
    a.add_argument("--model", help="the model to extend: an installed model's name or a model folder "
                   "(default: the default model)")
    a.add_argument("--name", help="name of the new decoder (default: from the anatomy, unique in the model)")
    a.add_argument("--anatomies", nargs="+", help="catalog anatomy names (commas or spaces; @file); one the "
                   "model already has is corrected")
    a.add_argument("--new-anatomy", metavar="NAME", help="a new anatomy beyond the catalog, owned by this decoder "
                   "(stored in the model's manifest with a label from 1000 up)")
    a.add_argument("--color", type=int, nargs=3, metavar=("R", "G", "B"), help="colour of --new-anatomy (0-255)")
    a.add_argument("--code", metavar="SCHEME^VALUE^MEANING", help="terminology code of --new-anatomy, "
                   "e.g. SCT^78961009^Spleen")
    a.add_argument("--pair", nargs=3, action="append", metavar=("IMAGE", "SEG", "SEGMENT"),
                   help="a training scan and its segmentation: a .seg.nrrd and a segment name or ID, or a label "
                        "map and a label value (repeatable; needs a decoder with one anatomy)")
    a.add_argument("--validate", nargs=3, metavar=("IMAGE", "SEG", "SEGMENT"),
                   help="one held-out scan and segment, never trained on: its Dice is reported about every 10 %% "
                        "of the steps and at the end, and recorded in the manifest")
    out = a.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="new model folder (the old one is not touched)")
    out.add_argument("--install", metavar="NEW_NAME", help="install the new version in your model folder under "
                     "this name (the old model stays installed)")
    a.add_argument("--set-default", action="store_true", help="with --install: make the new version the default")
    a.add_argument("--decoder-width", type=float, default=0.5)
    a.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="bar: a progress bar on stderr (default); json: JSON events on stdout (clnet/events.py): "
                        "progress with step, loss, eta_s and validation_dice, then a result; none: silent")
    # Half the patches anywhere: a new head on one painted scan otherwise learns too little of what
    # its anatomy is not (benchmarks/results/learn_anatomy.md: 0.62-0.91 with 0.67, 0.89-0.94 with 0.5).
    _optim_args(a, steps=500, lr=2e-3, data_required=False, fg_fraction=0.5)
    a.set_defaults(func=cmd_add_decoder)

    p = sub.add_parser("prune", help="structured pruning of one decoder (narrower, smaller, faster)",
                       description="Progressive channel pruning with rewinding and distillation.")
    p.add_argument("--model", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--max-dice-drop", type=float, default=0.02, help="stop before mean Dice drops more than this")
    p.add_argument("--rounds", type=int, default=3, help="maximum prune rounds")
    p.add_argument("--fraction", type=float, default=0.3, help="share of remaining channels removed per round")
    p.add_argument("--min-channels", type=int, default=4, help="never narrow a conv below this")
    p.add_argument("--rewind", help="early decoder weights (safetensors, e.g. WORK/rewind/NAME.safetensors)")
    _optim_args(p, steps=100, lr=1e-3)
    p.set_defaults(func=cmd_prune)
