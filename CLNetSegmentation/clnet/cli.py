"""The ``clnet`` command: argument parsing and printing only; the work happens in the library.

Start-up stays light: this module and the parser import neither torch nor SimpleITK, so ``--help``,
``--version``, ``anatomies`` and ``models list`` answer at once. Each command imports what it needs
when it runs, and the commands defined next to their feature (training, import, body part, batch)
are loaded only when they are the command on the line (see :data:`PLUGIN_COMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from . import __version__
from .cli_options import add_segment_options
from .errors import ClnetError

Handler = Callable[[argparse.Namespace], int]

#: Subcommands defined next to their feature: module → {command: its line in ``clnet --help``}.
#: The module is imported only when one of its commands is run (its package may import torch);
#: ``Testing/test_cli.py`` checks that these lines match what each module registers.
PLUGIN_COMMANDS: dict[str, dict[str, str]] = {
    "clnet.models_cli": {"models": "list, verify, install or download models; choose the default"},
    "clnet.training.cli": {
        "train": "train the general encoder and first decoder(s) (stage 1)",
        "add-decoder": "train a new decoder on a model's frozen encoder",
        "prune": "structured pruning of one decoder (narrower, smaller, faster)",
    },
    "clnet.official.cli": {
        "import-official": "import the official CL-Net weights (results/ tree) into a clnet model folder",
    },
    "clnet.bodypart.cli": {"bodypart": "body-position score per axial slice (decoder gating)"},
    "clnet.batch.cli": {"batch": "segment many CTs (files, folders, DICOM series, CSV list)"},
}


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

    # 28 + 6 + bar + 14 characters: the bar takes what the terminal leaves, so 80 columns fit.
    bar = tqdm(total=1000, file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc:<28.28} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

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


def _segment_input(args: argparse.Namespace) -> str:
    if args.example and args.input:
        raise ClnetError(f"Give either an INPUT ('{args.input}') or --example, not both.")
    if args.example:
        from .data import example_ct

        return str(example_ct())
    if not args.input:
        raise ClnetError("`clnet segment` needs an INPUT: a NIfTI, NRRD or MHA file or a DICOM folder.",
                         "Or pass --example to segment the example CT that ships with clnet.")
    return args.input


def _summary(found: int, requested: int, subset: bool) -> str:
    if subset:
        return f"{found} of {requested} requested anatomies found"
    return f"{found} of the model's {requested} anatomies found"


def cmd_segment(args: argparse.Namespace) -> int:
    from .io.atomic import prepare_output_folder, remove_empty

    source_path = _segment_input(args)
    # Before anything slow: a bad -o fails in a fraction of a second, not after the segmentation.
    created = prepare_output_folder(args.output)
    try:
        return _run_segment(args, source_path)
    except BaseException:
        remove_empty(created)  # a failed run leaves no empty folder behind it
        raise


def _run_segment(args: argparse.Namespace, source_path: str) -> int:
    from .inference import Segmenter
    from .io import read_image
    from .outputs import check_output_request, save_result

    source = read_image(source_path, series_uid=args.series)
    check_output_request(args.output, source, args.formats)
    segmenter = Segmenter(args.model, device=args.device, batch_size=args.batch_size, precision=args.precision,
                          official_compat=args.official_compat)
    update, close = _progress(args)
    try:
        result = segmenter.segment(source, anatomies=args.anatomies, regions=args.regions, fast=args.fast,
                                   force=args.force, overlap=args.overlap, progress=update,
                                   per_decoder=args.per_decoder, locate=args.locate)
        written = save_result(result, args.output, source, formats=args.formats, stats=args.stats,
                              preview=args.preview, names=args.names)
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
        if m.demo:
            print(f"note: model {m.name!r} is a demonstration model, not for clinical use.", file=sys.stderr)
        elif not m.clinical_use:
            print(f"note: model {m.name!r} holds research weights, not for clinical use.", file=sys.stderr)
        subset = bool(args.anatomies or args.regions)
        print(f"{_summary(len(result.present), len(result.requested), subset)}; "
              f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def cmd_anatomies(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .catalog.user import catalog_for

    catalog = load_catalog()
    available: set[str] = set()
    model_name = None
    if not args.all_models:
        try:
            from .manifest import read_manifest  # not clnet.checkpoint: reading a manifest needs no torch
            from .registry import resolve_model

            manifest = read_manifest(resolve_model(args.model))
            model_name = manifest.name
            catalog = catalog_for(manifest)  # the catalog plus the model's own "My anatomies"
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
    from .io.evaluate_report import evaluate_files, format_report

    fmt = "json" if args.json else args.format
    report = evaluate_files(args.prediction, args.reference, prediction_labels=args.prediction_labels,
                            reference_labels=args.reference_labels, distances=not args.no_distances)
    sys.stdout.write(format_report(report, fmt))
    return 0


def build_parser(plugins: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``clnet`` parser. ``plugins`` names the modules of :data:`PLUGIN_COMMANDS` to load (default:
    all); the commands of the others are listed in ``--help`` by name only, without importing them."""
    p = argparse.ArgumentParser(prog="clnet", description="CL-Net whole-body CT segmentation.")
    p.add_argument("--version", action="version", version=f"clnet {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks for unexpected errors (accepted anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("segment", help="segment a CT (NIfTI, NRRD, MHA or a DICOM series folder)")
    s.add_argument("input", nargs="?",
                   help="the CT: a NIfTI (.nii/.nii.gz), NRRD or MHA file, or a folder holding one DICOM series")
    s.add_argument("--example", action="store_true",
                   help="segment the example CT that ships with clnet instead of an INPUT")
    s.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
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

    e = sub.add_parser(
        "evaluate", help="Dice and surface distances per anatomy between a prediction and a reference",
        description="Compares two label maps on the same grid, anatomy by anatomy: Dice, the 95th percentile "
                    "Hausdorff distance and the mean surface distance (mm, on the image's physical spacing). "
                    "Label values are matched by anatomy name, so a TotalSegmentator map can be the reference.")
    e.add_argument("prediction", help="predicted label map (e.g. OUT/segmentation.nii.gz)")
    e.add_argument("reference", help="reference label map on the same grid")
    e.add_argument("--reference-labels", metavar="MAP.json",
                   help='the reference\'s {"value": "name"} map (TotalSegmentator names work); default: its '
                        "values are catalog labels")
    e.add_argument("--prediction-labels", metavar="MAP.json",
                   help="the prediction's map; default: the segmentation.json beside it, else catalog labels")
    e.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    e.add_argument("--json", action="store_true", help="same as --format json")
    e.add_argument("--no-distances", action="store_true", help="Dice only (skips the surface distances)")
    e.set_defaults(func=cmd_evaluate)

    wanted = set(PLUGIN_COMMANDS) if plugins is None else set(plugins)
    for module, commands in PLUGIN_COMMANDS.items():
        register = _load_plugin(module) if module in wanted else None
        if register is not None:
            register(sub)
            continue
        for name, text in commands.items():
            sub.add_parser(name, help=text)  # a stand-in: main() loads the real one when it is run
    return p


def _load_plugin(module: str) -> Callable | None:
    """The module's ``register`` function, or None when that part of clnet is not installed."""
    try:
        return __import__(module, fromlist=["register"]).register
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
        return None


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``--debug`` may stand anywhere (errors suggest adding it); take it out before parsing."""
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    return [a for i, a in enumerate(args) if not (i < end and a == "--debug")], debug


def _plugin_of(argv: Sequence[str]) -> list[str]:
    """The plug-in module whose command is on the line (top-level options take no values)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return [m for m, commands in PLUGIN_COMMANDS.items() if command in commands]


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = _split_debug(sys.argv[1:] if argv is None else argv)
    parser = build_parser(plugins=_plugin_of(argv))
    args = parser.parse_args(argv)
    args.debug = debug
    try:
        return int(args.func(args) or 0)
    except ClnetError as exc:
        exc = exc.for_caller("cli")
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
