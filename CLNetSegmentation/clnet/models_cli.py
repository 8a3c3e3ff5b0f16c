"""``clnet models``: list, verify, install, choose the default, download the official model.

Kept light: listing reads manifests only (no torch, no MONAI); torch loads for ``verify`` and
``install``, ``huggingface_hub`` for ``download``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import default_model_name, list_models

    default = default_model_name()
    for name, path, manifest in list_models():
        mark = "*" if name == default else " "
        if manifest is None:
            print(f"{mark} {name:<20} {path}  (unreadable manifest)")
            continue
        flag = "demo" if manifest.demo else ("clinical" if manifest.clinical_use else "research")
        base = manifest.base_model  # a version made by `clnet add-decoder`: which model it came from
        lineage = f", v{manifest.version} from {base.get('name')} v{base.get('version')}" if base else ""
        print(f"{mark} {name:<20} {len(manifest.decoders)} decoders, {len(manifest.anatomy_owner())} anatomies, "
              f"{flag}{lineage}  {path}")
    print("* = the default model (`clnet models default NAME`)" if default else
          "no default model set: `clnet segment` uses the bundled demo (`clnet models default NAME` changes that)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .checkpoint import verify_model
    from .registry import resolve_model

    path = resolve_model(args.model)
    m = verify_model(path)
    print(f"OK: {m.name} ({path}) — encoder and {len(m.decoders)} decoder(s) match their sha256 and architecture")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .registry import install_model

    target = install_model(args.path, name=args.name, overwrite=args.overwrite)
    print(f"installed {target}")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    from .registry import default_model_name, resolve_model, set_default_model, user_config_path

    if args.unset:
        set_default_model(None)
        print("default model cleared: `clnet segment` uses the bundled demo model")
        return 0
    if args.name:
        set_default_model(args.name)
        print(f"default model: {args.name} (saved in {user_config_path()})")
        if os.environ.get("CLNET_MODEL"):
            print(f"note: CLNET_MODEL={os.environ['CLNET_MODEL']} is set and takes precedence.", file=sys.stderr)
        return 0
    name = default_model_name()
    used = resolve_model(None)
    print(f"default model: {name or 'none set'}; `clnet segment` without --model uses {used}")
    return 0


# --------------------------------------------------------------------------- download
_HEADS_EPILOG = """heads (official name = friendly name, anatomies):
  MERGED_HN1 = hn1 (26), MERGED_HN2 = hn2 (13), MERGED_HN3 = hn3 (10), MERGED_CHEST1 = chest1 (35),
  MERGED_CHEST2 = chest2 (15), MERGED_ABDOMEN = abdomen (27), MERGED_BONE = bone (63),
  HN_LNS = hn_lns (18), Chest_LNS = chest_lns (15).
  `--list-heads` shows each head's download size from the hub's records (or from --from's copy).

what happens:
  1. list the hub repository legendchilli/clNet at --revision (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE
     apply) and find, wherever the results/ tree sits, the general-encoder task, the chosen heads' tasks
     (checkpoint, plans.json, bpr_scores.json) and public_bpr_model/;
  2. download only those files into $CLNET_HOME/downloads/ (not the hub cache), each checked against the
     size and sha256 the hub records; an interrupted download continues where it stopped on the next run;
  3. convert them with the importer (as `clnet import-official`), verify the result and install it as the
     model NAME (default clnet-official), replacing an earlier one only once the new one is complete;
  4. delete the downloaded originals unless --keep-originals.
  Running it again when the installed model already came from the same files downloads nothing.
  Offline: --from DIR|ZIP with a copy of the release (or a hub cache snapshot, used automatically)."""


def _install_sigterm() -> object:
    """SIGTERM (the Slicer module's cancel) becomes KeyboardInterrupt, so clean-up code runs."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(_sig, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _raise)


def cmd_download(args: argparse.Namespace) -> int:
    from .cli import _events, _json_mode, _progress
    from .hub import Feedback, describe_release, download_official
    from .hub.release import format_size

    if args.list_heads:
        heads, common = describe_release(args.source, revision=args.revision)
        if _json_mode(args):
            _events(args).result(heads=[h.__dict__ for h in heads], common_bytes=common)
            return 0
        print(f"{'head':<16}{'friendly':<11}{'anatomies':>9}  {'download':>10}")
        for h in heads:
            print(f"{h.head:<16}{h.alias:<11}{h.anatomies:>9}  {format_size(h.size) if h.available else 'missing':>10}")
        print(f"every download also needs the general encoder and body-part model: {format_size(common)}")
        return 0

    json_mode = _json_mode(args)
    quiet = args.quiet or args.progress == "none"
    if json_mode:
        events = _events(args)
        feedback = Feedback(progress=lambda stage, fraction, **d: events.emit("progress", stage=stage,
                                                                             fraction=round(fraction, 4), **d),
                            message=events.message)
        close = lambda: None  # noqa: E731
    else:
        bar: dict = {}  # the progress bar appears with the first progress, not before an early error

        def progress(stage: str, fraction: float, **_details) -> None:
            if not bar:
                bar["update"], bar["close"] = _progress(args)
            if bar["update"] is not None:
                bar["update"](stage, fraction)

        def message(text: str) -> None:
            if quiet:
                return
            if bar.get("update") is not None:
                from tqdm import tqdm

                tqdm.write(text, file=sys.stderr)  # above the bar, not through it
            else:
                print(text, file=sys.stderr)

        feedback = Feedback(progress=progress, message=message)
        close = lambda: bar and bar["close"]()  # noqa: E731
    previous = _install_sigterm()
    try:
        result = download_official(args.heads, source=args.source, revision=args.revision, name=args.name,
                                   set_default=args.set_default, keep_originals=args.keep_originals,
                                   force=args.force, feedback=feedback)
    finally:
        close()
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
    if json_mode:
        _events(args).result(**result.to_dict())
        return 0
    if not args.quiet:
        state = "already up to date" if result.up_to_date else "installed"
        print(f"{state}: {result.name} at {result.path} — heads {', '.join(result.heads)}; "
              f"release files {format_size(result.release_bytes)}, downloaded {format_size(result.downloaded_bytes)}, "
              f"model {format_size(result.model_bytes)}, {result.seconds:.1f} s")
        if result.default:
            print(f"{result.name} is now the default model: `clnet segment` uses it without --model")
        else:
            print(f"use it with `clnet segment CT -o OUT --model {result.name}` "
                  f"(or make it the default: `clnet models default {result.name}`)")
        print("note: official CL-Net weights are research weights, not for clinical use.", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``models`` subcommand to the main ``clnet`` parser."""
    m = subparsers.add_parser("models", help="list, verify, install or download models; choose the default",
                              description="Models: the bundled demo and those installed in $CLNET_HOME/models "
                                          "(default ~/.clnet/models). Without an action: list.")
    m.set_defaults(func=cmd_list)
    sub = m.add_subparsers(dest="action", metavar="{list,verify,install,default,download}")
    sub.add_parser("list", help="installed models (* = default)").set_defaults(func=cmd_list)

    v = sub.add_parser("verify", help="check every sha256, tensor name and shape of a model")
    v.add_argument("model", metavar="NAME|DIR", help="an installed model's name or a model folder")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("install", help="verify a model folder or .zip and install it")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--name", help="install under this name (default: the manifest's)")
    i.add_argument("--overwrite", action="store_true", help="replace an installed model of that name")
    i.set_defaults(func=cmd_install)

    d = sub.add_parser("default", help="show or set the model `clnet segment` uses without --model",
                       description="Order in which clnet picks a model: --model, $CLNET_MODEL, this default, "
                                   "the bundled demo. Saved in $CLNET_HOME/config.json.")
    d.add_argument("name", nargs="?", metavar="NAME", help="an installed model's name")
    d.add_argument("--unset", action="store_true", help="clear the default (back to the bundled demo)")
    d.set_defaults(func=cmd_default)

    g = sub.add_parser("download", help="download the official CL-Net model and install it",
                       description="Download the official CL-Net release (model hub repository legendchilli/clNet), "
                                   "only the parts the chosen heads need, verify, convert and install it.",
                       epilog=_HEADS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("what", choices=["official"], help="which model (the official CL-Net release)")
    g.add_argument("--heads", nargs="+", metavar="NAME", help="heads to install (default: all nine)")
    g.add_argument("--revision", default="main", help="branch, tag or commit of the hub repository (default main)")
    g.add_argument("--name", default="clnet-official", help="installed model name (default clnet-official)")
    g.add_argument("--set-default", action="store_true", help="make it the default model")
    g.add_argument("--keep-originals", action="store_true",
                   help="keep the downloaded release files in $CLNET_HOME/downloads/ (default: delete them)")
    g.add_argument("--from", dest="source", metavar="DIR|ZIP",
                   help="use a local copy of the release (a folder or a .zip of the hub repository) instead of "
                        "the hub")
    g.add_argument("--force", action="store_true", help="import and install again even if up to date")
    g.add_argument("--list-heads", action="store_true", help="list the heads and their download sizes, then stop")
    g.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="bar: a progress bar on stderr (default); json: JSON events on stdout (clnet/events.py)")
    g.add_argument("-q", "--quiet", action="store_true")
    g.set_defaults(func=cmd_download)
