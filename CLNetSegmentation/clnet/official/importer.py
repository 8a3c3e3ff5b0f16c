"""Turn the official CL-Net ``results/`` tree into a clnet model folder (safetensors + manifest).

Official layout (nnU-Net v1)::

    results/clNet/3d_fullres/<TaskNNN_Name>/<Trainer>__<Plans>/plans.json
                                                         .../all/model_final_checkpoint.model
                                                         .../fold_<k>/model_final_checkpoint.model

One task holds the general encoder (``Task001_SuperGeneralEncoder``); every other task holds the
head(s) it trained. A decoder task's checkpoint also carries the encoder and older heads, but, as
in official inference, only the heads that task owns are taken from it, and the encoder only from
the general-encoder task.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..bodypart.bpreg_import import find_bpr_folder, import_bpr
from ..checkpoint import save_model, sha256_file
from ..errors import ModelError
from ..manifest import BodyPartEntry, DecoderEntry, Manifest, OfficialCompat, Preprocessing
from ..model import CLNet, Decoder, Encoder
from ..model.shrink import shrink_decoder
from .layout import (
    decoder_name_map,
    encoder_name_map,
    infer_decoder_config,
    infer_encoder_config,
    rename_checked,
)
from .plans import (
    OFFICIAL_PAD_VALUE,
    OFFICIAL_PATCH_SIZE,
    OFFICIAL_STEP_SIZE,
    OFFICIAL_WINDOWS,
    ConfigTask,
    head_anatomies,
    head_class_windows,
    head_range_from_class_scores,
    official_label_table,
    read_config,
    read_json,
    read_plans,
    window_from_range,
)
from .reader import fold_pruning, load_checkpoint_safely, select_head_weights, split_state, state_dict_of

VARIANT = "clnet-official-v1"
OFFICIAL_TRAINER = "clNetTrainerV2_SelectiveChannelDA_Continual_Decoding_Ensemble__clNetPlans"
CHECKPOINT_NAMES = ("model_final_checkpoint.model", "model_best.model", "model_latest.model")
_TASK_RE = re.compile(r"^Task\d+_.+")
_MAX_DEPTH = 6
BODYPART_FILE = "bodypart_bpreg.safetensors"

Log = Callable[[str], None]


@dataclass
class TaskSource:
    """One official task folder resolved on disk."""

    task: str
    trainer_dir: Path
    plans_path: Path
    checkpoint: Path | None = None
    heads: dict[str, list[int]] = field(default_factory=dict)  # head → its dataset label ids, channel order
    config: ConfigTask | None = None


@dataclass
class ImportReport:
    """What ``import_official`` wrote and anything the user should know."""

    directory: Path
    manifest: Manifest
    warnings: list[str] = field(default_factory=list)
    skipped_heads: list[str] = field(default_factory=list)


def find_trainer_dirs(root: Path) -> dict[str, list[Path]]:
    """Task name → trainer folders (``<Trainer>__<Plans>`` holding plans.json) below ``root``."""
    found: dict[str, list[Path]] = {}
    root = root.resolve()
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if len(here.parts) - base_depth >= _MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        if "plans.json" in filenames and "__" in here.name and _TASK_RE.match(here.parent.name):
            found.setdefault(here.parent.name, []).append(here)
    return found


def _pick_trainer_dir(task: str, dirs: list[Path]) -> Path:
    if len(dirs) == 1:
        return dirs[0]
    # Prefer the official trainer under 3d_fullres; anything else is ambiguous.
    preferred = [d for d in dirs if d.name.replace("_DDP__", "__") == OFFICIAL_TRAINER and d.parent.parent.name == "3d_fullres"]
    if len(preferred) == 1:
        return preferred[0]
    raise ModelError(f"Task {task} has several trainer folders: {[str(d) for d in dirs]}.",
                     "Point SRC at the folder of the one to import.")


def find_checkpoint(trainer_dir: Path, fold: str | None = None, cfg_key: str | None = None,
                    name: str | None = None) -> Path | None:
    """The checkpoint official inference would load (configured fold first, then all, fold_0..9)."""
    folds = ["all"] + [f"fold_{i}" for i in range(10)]
    if fold:
        folds = [fold] + [f for f in folds if f != fold]
        if name and (trainer_dir / fold / name).is_file():
            return trainer_dir / fold / name
    for f in folds:
        for model in CHECKPOINT_NAMES:
            for candidate in ([f"{cfg_key}_{model}"] if cfg_key else []) + [model]:
                path = trainer_dir / f / candidate
                if path.is_file():
                    return path
    return None


def _window(head: str, src: TaskSource, labels: list[int],
            scores: Any) -> tuple[tuple[float, float] | None, str, dict | None]:
    """Body-part window: configuration JSON, else the task's bpr_scores.json (``scores``, None when the
    task has none), else the known values."""
    if src.config and isinstance(src.config.bpr_range.get(head), dict):
        rng = src.config.bpr_range[head]
        return window_from_range(head, rng), "configuration bpr_range_for_decoders", rng
    if scores is not None:
        rng = head_range_from_class_scores(scores, labels) if isinstance(scores, dict) else None
        if rng:
            return window_from_range(head, rng), "bpr_scores.json (per-class statistics)", rng
    if head in OFFICIAL_WINDOWS:
        return OFFICIAL_WINDOWS[head], "official release windows (reference table)", None
    return None, "none (no body-part statistics found)", None


def _resolve_sources(
    root: Path | None, config: Path | None, encoder_task: str | None, log: Log, wanted: list[str] | None = None
) -> tuple[TaskSource, list[TaskSource], list[str]]:
    """Locate the encoder task and the decoder tasks with the heads each one owns."""
    warnings: list[str] = []
    cfg_tasks: list[ConfigTask] = []
    if config is not None:
        cfg_tasks, _ = read_config(config)
    found = find_trainer_dirs(root) if root is not None else {}
    # Tasks named by the configuration may live at their recorded absolute path.
    for ct in cfg_tasks:
        if ct.task not in found and ct.output_folder and (Path(ct.output_folder) / "plans.json").is_file():
            found[ct.task] = [Path(ct.output_folder)]
    if not found:
        raise ModelError(f"No official task folders (TaskNNN_Name/<Trainer>__<Plans>/plans.json) found under {root}.",
                         "Point SRC at the official results/ folder (the one that contains clNet/3d_fullres/).")

    def source(task: str, ct: ConfigTask | None) -> TaskSource:
        tdir = _pick_trainer_dir(task, found[task])
        return TaskSource(task=task, trainer_dir=tdir, plans_path=tdir / "plans.json", config=ct)

    # The general encoder.
    ge_task = encoder_task
    if ge_task is None and cfg_tasks:
        ge_task = next((ct.task for ct in cfg_tasks if ct.is_encoder), None)
    if ge_task is None:
        candidates = [t for t in found if "generalencoder" in t.lower()]
        if len(candidates) != 1:
            raise ModelError(f"Cannot tell which task holds the general encoder (candidates: {candidates or 'none'}).",
                             "Pass --encoder-task TaskNNN_Name or --config with the official JSON.")
        ge_task = candidates[0]
    if ge_task not in found:
        raise ModelError(f"The general-encoder task {ge_task} is not under {root}.",
                         "Download the general encoder (Task001_...) as well; every head needs it.")
    ge_cfg = next((ct for ct in cfg_tasks if ct.task == ge_task), None)
    encoder = source(ge_task, ge_cfg)
    encoder.checkpoint = find_checkpoint(encoder.trainer_dir, ge_cfg.fold if ge_cfg else None,
                                         ge_cfg.key if ge_cfg else None, ge_cfg.checkpoint_name if ge_cfg else None)
    if encoder.checkpoint is None:
        raise ModelError(f"No checkpoint found for the general encoder in {encoder.trainer_dir}.",
                         "Expected all/ or fold_N/ with model_final_checkpoint.model.")

    # Head ownership: from the configuration, else from the official decoders table.
    owners: dict[str, tuple[str, list[int], ConfigTask | None]] = {}
    if cfg_tasks:
        for ct in cfg_tasks:
            if ct.is_encoder:
                continue
            for head, labels in ct.heads.items():
                owners[head] = (ct.task, labels, ct)  # a later task re-training a head wins, as officially
    else:
        table = official_label_table()
        for row in table:
            labels = owners.get(row.head, (row.source_task, [], None))[1]
            owners[row.head] = (row.source_task, labels + [row.label_id], None)
    decoders: dict[str, TaskSource] = {}
    for head, (task, labels, ct) in owners.items():
        if wanted and head not in wanted:
            continue
        if task not in found:
            warnings.append(f"decoder {head}: task folder {task} not found; skipped")
            continue
        if task not in decoders:
            src = source(task, ct)
            src.checkpoint = find_checkpoint(src.trainer_dir, ct.fold if ct else None, ct.key if ct else None,
                                             ct.checkpoint_name if ct else None)
            decoders[task] = src
        decoders[task].heads[head] = labels
    for task, src in list(decoders.items()):
        if src.checkpoint is None:
            warnings.append(f"task {task}: no checkpoint in {src.trainer_dir}; heads {sorted(src.heads)} skipped")
            del decoders[task]
    for w in warnings:
        log(f"warning: {w}")
    return encoder, list(decoders.values()), warnings


def _check_patch(patch: Sequence[int], divisor: Sequence[int], head: str) -> None:
    if any(int(p) % int(d) for p, d in zip(patch, divisor)):
        raise ModelError(f"Patch size {tuple(patch)} of {head} is not a multiple of {tuple(divisor)}.",
                         "The official patch sizes are multiples of the encoder's total stride; check --config.")


def import_official(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    heads: Iterable[str] | None = None,
    encoder_task: str | None = None,
    name: str = "clnet-official",
    use_ema: bool = True,
    shrink: bool = True,
    overwrite: bool = False,
    log: Log | None = None,
    bodypart: bool = True,
) -> ImportReport:
    """Import the official release found at ``source`` into a clnet model folder at ``output``.

    ``source`` is the official ``results/`` tree, or the official configuration JSON (then the tree
    is ``results`` or the paths recorded in the JSON). ``heads`` limits the import to some heads.
    With ``shrink`` (default) channels that the pruning masks left without effect are removed, so
    the decoders become genuinely smaller networks with the same output (:mod:`clnet.model.shrink`).
    With ``bodypart`` (default) the release's body-part network (``public_bpr_model/``, anywhere in or
    just above the tree) is imported too and gates the model's heads (:mod:`clnet.bodypart.bpreg_import`).
    """
    from ..catalog import load_catalog

    log = log or (lambda _msg: None)
    source = Path(source)
    cfg_path = Path(config) if config else None
    if source.is_file() and source.suffix.lower() == ".json":
        cfg_path, root = source, (Path(results) if results else None)
    elif source.is_dir():
        root = source
    else:
        raise ModelError(f"{source} is neither the official results folder nor a configuration JSON.")
    wanted = list(heads) if heads else None
    enc_src, dec_srcs, warnings = _resolve_sources(root, cfg_path, encoder_task, log, wanted)
    available = {h for s in dec_srcs for h in s.heads}
    if wanted:
        unknown = [h for h in wanted if h not in available]
        if unknown:
            raise ModelError(f"Head(s) {unknown} not found in the official tree.", f"Available: {sorted(available)}.")
        for s in dec_srcs:
            s.heads = {h: v for h, v in s.heads.items() if h in wanted}
    dec_srcs = [s for s in dec_srcs if s.heads]
    if not dec_srcs:
        raise ModelError("No decoder checkpoints found next to the general encoder.",
                         "Download at least one decoder task folder from the official release.")

    # --- general encoder ---------------------------------------------------------------------
    assert enc_src.checkpoint is not None
    log(f"reading general encoder {enc_src.checkpoint}")
    ge_plans = read_plans(enc_src.plans_path)
    ge_state = split_state(state_dict_of(load_checkpoint_safely(enc_src.checkpoint), enc_src.checkpoint))
    if not ge_state.encoder:
        raise ModelError(f"{enc_src.checkpoint} contains no encoder.* tensors.", "Is this the general-encoder task?")
    # The released encoder is never pruned; folding anyway keeps a re-parametrised one importable.
    ge_encoder, enc_pruning = fold_pruning(ge_state.encoder, None, "general encoder")
    enc_cfg = infer_encoder_config(ge_encoder, ge_plans.pool_kernels, ge_plans.conv_kernels or None)
    if ge_plans.conv_per_stage is not None and ge_plans.conv_per_stage != enc_cfg.convs_per_stage:
        raise ModelError(f"The encoder plans say {ge_plans.conv_per_stage} convs per stage, the weights have "
                         f"{enc_cfg.convs_per_stage}.")
    encoder = Encoder(enc_cfg)
    enc_tensors = rename_checked(ge_encoder, encoder_name_map(enc_cfg), encoder.state_dict(), "general encoder")
    encoder.load_state_dict(enc_tensors, strict=True)

    provenance_ckpts: list[dict[str, Any]] = [_file_record(enc_src.checkpoint, root, "general encoder", enc_src.task)]
    provenance_plans: list[dict[str, Any]] = [_file_record(enc_src.plans_path, root, "plans", enc_src.task)]
    ignored: dict[str, int] = {f"{enc_src.task}: {k}": v for k, v in ge_state.other.items()}

    # --- decoders ----------------------------------------------------------------------------
    catalog = load_catalog()
    table = official_label_table()
    entries: dict[str, DecoderEntry] = {}
    modules: dict[str, Decoder] = {}
    preps: dict[str, Preprocessing] = {}
    for src in dec_srcs:
        assert src.checkpoint is not None
        log(f"reading {src.task} ({', '.join(src.heads)}) from {src.checkpoint}")
        plans = read_plans(src.plans_path)
        state = split_state(state_dict_of(load_checkpoint_safely(src.checkpoint), src.checkpoint))
        provenance_ckpts.append(_file_record(src.checkpoint, root, "decoders " + ", ".join(src.heads), src.task))
        provenance_plans.append(_file_record(src.plans_path, root, "plans", src.task))
        for k, v in state.other.items():
            ignored[f"{src.task}: {k}"] = v
        for h in state.heads():
            if h not in src.heads:  # copies of heads owned by earlier tasks
                ignored[f"{src.task}: decoder_dict/ema_dict.{h}"] = len(state.decoders.get(h, {})) + len(state.ema.get(h, {}))
        for head, labels in src.heads.items():
            if head not in state.decoders and head not in state.ema:
                raise ModelError(f"{src.checkpoint} has no weights for decoder {head} (it has {state.heads()}).")
            ema_ok = use_ema and (src.config.ema_enabled.get(head, True) if src.config else True)
            tensors, pruning, picked = select_head_weights(head, state.decoders.get(head), state.ema.get(head), ema_ok)
            dec_cfg = infer_decoder_config(tensors, enc_cfg, head)
            official_names = head_anatomies(head, table)
            if len(official_names) != len(labels) or dec_cfg.num_classes != len(official_names) + 1:
                raise ModelError(
                    f"Decoder {head} outputs {dec_cfg.num_classes} channels; the official table lists "
                    f"{len(official_names)} anatomies (+ background) and the configuration {len(labels)} labels.",
                    "The checkpoint does not match the released head; check the task folder.",
                )
            anatomies = []
            for n in official_names:
                try:
                    anatomies.append(catalog.by_name(n).name)
                except Exception as exc:  # noqa: BLE001 - re-raised with context
                    raise ModelError(f"Official anatomy {n!r} of {head} is not in clnet's catalog ({exc}).",
                                     "Update clnet (its catalog must cover the official anatomies).") from exc
            module = Decoder(enc_cfg, dec_cfg)
            module.load_state_dict(
                rename_checked(tensors, decoder_name_map(dec_cfg), module.state_dict(), f"decoder {head}"), strict=True
            )
            shrunk = None
            if shrink:
                small, small_cfg, shrunk = shrink_decoder(module.state_dict(), dec_cfg, enc_cfg)
                if shrunk.channels_after < shrunk.channels_before:
                    dec_cfg, module = small_cfg, Decoder(enc_cfg, small_cfg)
                    module.load_state_dict(small, strict=True)
            patch = None
            if src.config:
                patch = src.config.patch_size.get(head) or src.config.patch_size.get("all")
            patch = tuple(patch or OFFICIAL_PATCH_SIZE)
            _check_patch(patch, enc_cfg.divisor, head)
            # The official body crop grows its box by the plans' own patch size (official-compatible mode).
            prep = replace(plans.preprocessing(patch), crop_patch_zyx=plans.patch_size_zyx)  # type: ignore[arg-type]
            scores_path = src.trainer_dir / "bpr_scores.json"
            class_scores = read_json(scores_path, "body-part scores") if scores_path.is_file() else None
            window, window_src, rng = _window(head, src, labels, class_scores)
            class_windows, class_src = head_class_windows(head, official_names, labels, class_scores)
            info: dict[str, Any] = {
                "official_task": src.task,
                "official_labels": labels,
                "official_anatomy_names": official_names,
                "weights": picked,
                "pruning": pruning.to_dict(),
                "preprocessing": prep.to_dict(),
                "normalization_source": plans.normalization_source,
                "bodypart_range_source": window_src,
                "anatomy_bodypart_ranges_source": class_src,
            }
            if rng:
                info["bodypart_statistics"] = rng
            if shrunk is not None:
                info["shrink"] = shrunk.to_dict()
            by_catalog = {a: class_windows[n] for a, n in zip(anatomies, official_names) if n in class_windows}
            entries[head] = DecoderEntry(head, anatomies, dec_cfg, bodypart_range=window, info=info,
                                         anatomy_bodypart_ranges=by_catalog)
            modules[head] = module
            preps[head] = prep
            log(f"  {head}: {dec_cfg.num_classes - 1} anatomies, weights from {picked}, "
                f"sparsity {pruning.sparsity:.1%}"
                + (f", dead channels dropped: {shrunk.channels_before} → {shrunk.channels_after} channels, "
                   f"{shrunk.parameters_before / 1e6:.2f} → {shrunk.parameters_after / 1e6:.2f} M parameters"
                   if shrunk else ""))

    # --- assemble ----------------------------------------------------------------------------
    network = CLNet(enc_cfg, {h: e.config for h, e in entries.items()})
    network.encoder.load_state_dict(encoder.state_dict(), strict=True)
    for h, m in modules.items():
        network.decoders[h].load_state_dict(m.state_dict(), strict=True)
    first = next(iter(preps.values()))
    uniform = all(p.to_dict() == first.to_dict() for p in preps.values())
    if not uniform:
        warnings.append("decoders use different preprocessing (per-decoder settings in decoders.*.info.preprocessing)")
    bodypart_entry, bodypart_bytes, bpr = _import_bodypart(root, log) if bodypart else (None, None, None)
    manifest = Manifest(
        name=name,
        encoder=enc_cfg,
        preprocessing=first,
        decoders=entries,
        description="Official CL-Net release weights (research use), imported by clnet import-official.",
        version=_dt.date.today().isoformat(),
        demo=False,
        clinical_use=False,
        variant=VARIANT,
        provenance={
            "weights": "imported from the official CL-Net release",
            "official_code": "https://github.com/alibaba-damo-academy/clNet",
            "official_weights": "https://huggingface.co/legendchilli/clNet",
            "license_note": "research weights; see the official repository for their terms",
            "imported_with": f"clnet {__version__}",
            "imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": str(source.resolve()),
            "config": str(cfg_path.resolve()) if cfg_path else None,
            "checkpoints": provenance_ckpts,
            "plans": provenance_plans,
            "ignored_tensors": ignored,
            "encoder_pruning": enc_pruning.to_dict(),
        },
        extra={
            "official": {
                "pad_value": OFFICIAL_PAD_VALUE,
                "step_size": OFFICIAL_STEP_SIZE,
                "per_decoder_preprocessing": not uniform,
                "image_resampling": "nnU-Net v1: 3rd-order spline in-plane; order 0 along z when spacing ratio > 3",
                "bodypart_scale": "bpreg scores (0 = pelvis start, 100 = eyes end)",
                "bodypart_window_rule": "[p0.5 - 0.25*extent, p99.5 + 0.25*extent]; lesion heads [min - sd, max + sd]",
                "output": "official inference writes one label map per head with head-local values",
                "bpr_model": bpr,
            }
        },
        bodypart=bodypart_entry,
        # Inference follows the official pipeline where clnet's own differs (docs/official.md);
        # `clnet segment --official-compat off` turns it off.
        compat=OfficialCompat.official(),
    )
    written = save_model(network, manifest, output, overwrite=overwrite, bodypart=bodypart_bytes)
    log(f"wrote {output}: encoder + {len(entries)} decoder(s)")
    skipped = [w for w in warnings if "skipped" in w]
    return ImportReport(Path(output), written, warnings, skipped)


def _file_record(path: Path, root: Path | None, role: str, task: str) -> dict[str, Any]:
    rel = str(path)
    if root is not None:
        try:
            rel = str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return {"task": task, "role": role, "path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _import_bodypart(root: Path | None, log: Log) -> tuple[BodyPartEntry | None, bytes | None, dict | None]:
    """The release's bpreg body-part network as a manifest entry and its safetensors bytes (None: the
    tree has none, and clnet's own body-part model will gate)."""
    folder = find_bpr_folder(root)
    if folder is None:
        return None, None, None
    log(f"reading the body-part model {folder}")
    scorer, info = import_bpr(folder)
    entry = BodyPartEntry(kind=scorer.kind, file=BODYPART_FILE, settings=scorer.settings.to_dict(), info=info)
    weights = info["files"]["model.pt"]
    record = {"path": str(folder / "model.pt"), "sha256": weights["sha256"], "used": True, "file": BODYPART_FILE}
    log(f"  body-part network: {info['tensors']} tensors, {info['parameters'] / 1e6:.1f} M parameters → {BODYPART_FILE}")
    return entry, scorer.to_bytes(), record
