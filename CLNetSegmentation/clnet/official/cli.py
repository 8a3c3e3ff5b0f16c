"""``clnet import-official``: convert the official CL-Net release into a clnet model folder."""

from __future__ import annotations

import argparse
import sys


def cmd_import_official(args: argparse.Namespace) -> int:
    from .importer import import_official  # lazy: keeps `clnet --help` free of torch imports

    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    report = import_official(
        args.source, args.output, config=args.config, results=args.results, heads=args.heads,
        encoder_task=args.encoder_task, name=args.name, use_ema=not args.no_ema, shrink=not args.keep_dead_channels,
        overwrite=args.overwrite, log=log,
    )
    m = report.manifest
    print(f"imported {len(m.decoders)} decoder(s), {len(m.anatomy_owner())} anatomies into {report.directory}")
    for name, entry in m.decoders.items():
        print(f"  {name:<16} {len(entry.anatomies):3d} anatomies  weights: {entry.info.get('weights')}  "
              f"sparsity {entry.info.get('pruning', {}).get('sparsity', 0.0):.1%}"
              + (f"  parameters {sh['parameters_before'] / 1e6:.2f} → {sh['parameters_after'] / 1e6:.2f} M"
                 if (sh := entry.info.get("shrink")) else ""))
    if m.extra.get("official", {}).get("per_decoder_preprocessing"):
        print("note: the decoders were trained with different preprocessing; see decoders.*.info.preprocessing",
              file=sys.stderr)
    print("note: official CL-Net weights are research weights, not for clinical use.", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``import-official`` subcommand to the main ``clnet`` parser."""
    p = subparsers.add_parser(
        "import-official",
        help="import the official CL-Net weights (results/ tree) into a clnet model folder",
        description="Reads the official results/clNet/3d_fullres/Task*/<Trainer>__<Plans>/ folders (plans.json + "
                    "model_final_checkpoint.model) with a tensors-only loader and writes a clnet model folder.",
    )
    p.add_argument("source", help="the official results/ folder, or the official configuration JSON")
    p.add_argument("-o", "--output", required=True, help="model folder to create")
    p.add_argument("--config", help="official configuration JSON (e.g. CSS_Train_Merged_ALL_pred_cleaned.json)")
    p.add_argument("--results", help="the results/ folder when SOURCE is a configuration JSON")
    p.add_argument("--heads", nargs="+", metavar="HEAD", help="import only these decoders (e.g. MERGED_ABDOMEN)")
    p.add_argument("--encoder-task", help="task folder of the general encoder (default: found automatically)")
    p.add_argument("--name", default="clnet-official", help="model name in the manifest")
    p.add_argument("--no-ema", action="store_true", help="use the raw decoder weights instead of their EMA copies")
    p.add_argument("--keep-dead-channels", action="store_true",
                   help="keep the channels that pruning left without effect (default: drop them; same output, "
                        "smaller and faster decoders)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_import_official)
