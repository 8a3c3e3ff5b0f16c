"""``clnet batch``: segment many CTs in one run (plugged into the ``clnet`` command)."""

from __future__ import annotations

import argparse
import os
import sys

from ..cli_options import add_segment_options

_DESCRIPTION = """\
Segment many CTs with one model load. INPUTS are image files, folders of images or of case
subfolders, DICOM series folders (one case each) or CSV files with id,path columns. Each case
is written to OUTDIR/<id>/ like `clnet segment` does; OUTDIR/batch_manifest.jsonl records every
case and batch_manifest.csv summarises the run. Finished cases are verified and skipped when
the command is run again (--no-resume redoes them). Exit code 1 when any case failed."""


def register(subparsers) -> None:
    """Add the ``batch`` subcommand (same option names as ``segment``)."""
    b = subparsers.add_parser("batch", help="segment many CTs (files, folders, DICOM series, CSV list)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("inputs", nargs="+", metavar="INPUT")
    b.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (one subfolder per case)")
    add_segment_options(b)
    b.add_argument("--no-resume", dest="resume", action="store_false",
                   help="redo every case, even those already complete in OUTDIR")
    b.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="images read ahead in the background (0: off; default 2)")
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: no ADDRESS starts a local instance; or `auto`, `ray://HEAD:10001`")
    b.add_argument("--ray-workers", type=int, metavar="N", help="Ray actors (default: one per GPU, or CPUs/4)")
    b.add_argument("--ray-cpus-per-worker", type=int, metavar="N", help="CPUs each Ray actor reserves")
    b.add_argument("--retries", type=int, default=2,
                   help="extra attempts for unexpected (possibly transient) failures on Ray (default 2)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar; only the summary line")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from ..errors import ClnetError
    from .runner import run_batch

    if args.ray and args.ray != "local" and os.path.exists(args.ray):
        # `--ray IN1 IN2` makes argparse take IN1 as the address; say so instead of connecting to it.
        raise ClnetError(f"--ray took the input '{args.ray}' as its address.",
                         "Put --ray after the inputs, or write --ray=ADDRESS (e.g. --ray=auto).")
    summary = run_batch(
        args.inputs, args.output, model=args.model, device=args.device, batch_size=args.batch_size, precision=args.precision,
        official_compat=args.official_compat,
        resume=args.resume, prefetch=args.prefetch, ray=args.ray, ray_workers=args.ray_workers,
        ray_cpus_per_worker=args.ray_cpus_per_worker, retries=args.retries, progress=not args.quiet,
        anatomies=args.anatomies, regions=args.regions, fast=args.fast, force=args.force, overlap=args.overlap,
        formats=args.formats, stats=args.stats, preview=args.preview, per_decoder=args.per_decoder,
        locate=args.locate, names=args.names,
    )
    if args.quiet:  # the bar already showed failures as they happened
        for rec in summary.failed:
            print(f"failed {rec['id']}: {rec.get('error')}", file=sys.stderr)
    print(summary.summary_line())
    return summary.exit_code
