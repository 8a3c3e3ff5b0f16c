"""The ``clnet`` command: argument parsing and printing only; the work happens in the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .cli_options import add_segment_options
from .errors import ClnetError

Handler = Callable[[argparse.Namespace], int]


def _progress(args: argparse.Namespace):
    """The progress callback ``--progress`` asks for, and a function that closes it.

    ``bar`` draws one tqdm bar on stderr; ``json`` writes events on stdout (``clnet.events``), which
    is how the Slicer module follows a run in its worker process; ``none`` (or ``--quiet``) is silent.
    """
    mode = "none" if getattr(args, "quiet", False) else getattr(args, "progress", "bar")
    if mode == "json":
        return _events(args).progress, lambda: None
    if mode == "none":
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, bar_format="{desc:<40.40} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description_str(stage)
        bar.n = int(fraction * 1000)
        bar.refresh()

    return update, bar.close


def _events(args: argparse.Namespace):
    """The event writer of a ``--progress json`` run (one per run, created on first use)."""
    from .events import EventWriter

    if getattr(args, "_events", None) is None:
        args._events = EventWriter()
        args._events.hello(command=args.command)
    return args._events


def _json_mode(args: argparse.Namespace) -> bool:
    return getattr(args, "progress", None) == "json" and not getattr(args, "quiet", False)


def cmd_segment(args: argparse.Namespace) -> int:
    from .inference import Segmenter
    from .io import read_image
    from .outputs import check_output_request, save_result

    source = read_image(args.input, series_uid=args.series)
    check_output_request(args.output, source, args.formats)
    segmenter = Segmenter(args.model, device=args.device, batch_size=args.batch_size, precision=args.precision)
    update, close = _progress(args)
    try:
        result = segmenter.segment(source, anatomies=args.anatomies, regions=args.regions, fast=args.fast,
                                   force=args.force, overlap=args.overlap, progress=update,
                                   per_decoder=args.per_decoder, locate=args.locate)
        written = save_result(result, args.output, source, formats=args.formats, stats=args.stats,
                              preview=args.preview)
    finally:
        close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if _json_mode(args):
        events = _events(args)
        for w in result.warnings:
            events.message(f"warning: {w}")
        events.result(outputs={k: str(v) for k, v in written.items()},
                      present=[a.name for a in result.present], requested=[a.name for a in result.requested])
    elif not args.quiet:
        m = segmenter.manifest
        if m.demo or not m.clinical_use:
            print(f"note: model {m.name!r} is a demonstration model, not for clinical use.", file=sys.stderr)
        print(f"{len(result.present)}/{len(result.requested)} requested anatomies found; "
              f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def cmd_anatomies(args: argparse.Namespace) -> int:
    from .catalog import load_catalog

    catalog = load_catalog()
    available: set[str] = set()
    model_name = None
    if not args.all_models:
        try:
            from .checkpoint import read_manifest
            from .registry import resolve_model

            manifest = read_manifest(resolve_model(args.model))
            model_name = manifest.name
            available = {catalog.by_name(n).name for n in manifest.anatomy_owner()}
        except ClnetError as exc:
            if args.model:
                raise
            print(f"note: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(catalog.to_json(available), indent=1))
        return 0
    print(f"{len(catalog)} anatomies; model: {model_name or 'none'} ({len(available)} available)")
    for region in catalog.regions():
        print(f"\n{region}")
        for a in catalog.in_region(region):
            mark = "*" if a.name in available else " "
            print(f"  {mark} {a.label:4d}  {a.name:<26} {a.display_name}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .io import dice_per_label, read_image

    pred, ref = read_image(args.prediction).image, read_image(args.reference).image
    scores = dice_per_label(pred, ref)
    catalog = load_catalog()
    rows = []
    for label, dice in sorted(scores.items()):
        try:
            name = catalog.by_label(label).name
        except (ClnetError, KeyError):
            name = f"label_{label}"
        rows.append({"label": label, "name": name, "dice": dice})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['label']:4d}  {r['name']:<26} {r['dice']:.4f}")
        if rows:
            print(f"mean Dice over {len(rows)} labels: {sum(r['dice'] for r in rows) / len(rows):.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clnet", description="CL-Net whole-body CT segmentation.")
    p.add_argument("--version", action="version", version=f"clnet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment a CT (NIfTI, NRRD, MHA or a DICOM series folder)")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True, help="output folder")
    add_segment_options(s)
    s.add_argument("--series", help="DICOM SeriesInstanceUID when the folder holds several series")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="bar: a progress bar on stderr (default); json: one JSON event per line on stdout, "
                        "for programs that run clnet (see clnet/events.py); none: silent")
    s.set_defaults(func=cmd_segment)

    a = sub.add_parser("anatomies", help="list the anatomy catalog and what the model offers")
    a.add_argument("--json", action="store_true")
    a.add_argument("--model", help="model folder or name (default: the bundled model)")
    a.add_argument("--all-models", action="store_true", help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_anatomies)

    e = sub.add_parser("evaluate", help="Dice per label between a prediction and a reference label map")
    e.add_argument("prediction")
    e.add_argument("reference")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Callable]:
    """Subcommands defined next to their feature (models, training, import, batch) when present."""
    found = []
    for mod in ("clnet.models_cli", "clnet.training.cli", "clnet.official.cli", "clnet.bodypart.cli", "clnet.batch.cli"):
        try:
            found.append(__import__(mod, fromlist=["register"]).register)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):
                raise
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if _json_mode(args):
            _events(args).error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        if _json_mode(args):
            from .errors import CancelledError

            _events(args).error(CancelledError("Interrupted; nothing was written."), exit_code=130)
        return 130
    except Exception as exc:  # a bug: one line for the user, traceback on request
        if args.debug or os.environ.get("CLNET_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details and report it)",
              file=sys.stderr)
        if _json_mode(args):
            _events(args).error(exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
