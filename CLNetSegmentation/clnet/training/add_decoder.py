"""``clnet add-decoder``: continual learning — a new head trained on the FROZEN general encoder.

Only the new decoder's parameters are optimised; the encoder runs in eval mode without gradients.
The new model folder is written with ``save_model(copy_from=...)`` so the encoder and every existing
decoder file are copied byte for byte, and that is then verified (sha256 of every old file, and the
old heads' outputs on a real patch) — any difference is an error and the folder is removed.
"""

from __future__ import annotations

import copy
import datetime
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..catalog.user import catalog_for, new_user_anatomy
from ..checkpoint import load_model, save_model, sha256_bytes, sha256_file
from ..errors import ClnetError, ModelError
from ..manifest import DecoderEntry, Manifest
from ..model import CLNet
from .common import check_patch, decoder_config, pad_value, provenance, select_training_device
from .datasets import CaseSpec, PreparedCase, catalog_labels, load_dataset, prepare_cases, resolve_anatomies
from .distributed import barrier, cleanup, init_distributed
from .painted_window import painted_window
from .pairs import pair_cases
from .stage1 import check_coverage, evaluate_heads, save_rewind_snapshot
from .trainer import TrainConfig, fit, seed_everything
from .validation import prepare_held_out

#: ``report(stage, fraction, **fields)``: stages "prepare", "train", "validate", "verify" (see clnet.events).
Reporter = Callable[..., None]


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, shapes, bytes): detects any in-memory change."""
    parts = []
    for k, v in sorted(module.state_dict().items()):
        parts.append(k.encode() + str(tuple(v.shape)).encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return sha256_bytes(b"\0".join(parts))


def probe_patch(case: PreparedCase, patch: Sequence[int], pad: float) -> torch.Tensor:
    """A fixed real patch (centre of the first scan) to compare outputs before and after."""
    arr = case.image
    starts = [max(0, (s - p) // 2) for s, p in zip(arr.shape, patch)]
    crop = arr[tuple(slice(st, st + p) for st, p in zip(starts, patch))]
    out = np.full(tuple(patch), pad, dtype=np.float32)
    out[tuple(slice(0, s) for s in crop.shape)] = crop
    return torch.from_numpy(out)[None, None]


def verify_continual(old_dir: Path, new_dir: Path, old: Manifest, keep_decoders: Sequence[str],
                     probe: torch.Tensor | None = None, reference: dict[str, torch.Tensor] | None = None) -> None:
    """Fail unless the encoder and ``keep_decoders`` files are byte-identical and give identical outputs."""
    new = load_model(new_dir)  # also re-checks every sha256 against the new manifest
    problems = []
    pairs = [("encoder", old.encoder_file, new.manifest.encoder_file)]
    pairs += [(d, old.decoders[d].file, new.manifest.decoders[d].file) for d in keep_decoders]
    for what, f_old, f_new in pairs:
        a, b = sha256_file(old_dir / f_old), sha256_file(new_dir / f_new)
        if a != b:
            problems.append(f"{what}: {f_old} sha256 {a[:12]}… → {b[:12]}…")
    if probe is not None and reference is not None:
        with torch.inference_mode():
            out = new.network(probe, decoders=list(reference))
        for d, ref in reference.items():
            if not torch.equal(out[d], ref):
                problems.append(f"decoder {d}: output changed (max |Δ| {float((out[d] - ref).abs().max()):.3g})")
    if problems:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise ModelError("Continual-learning check FAILED, the new model was removed: " + "; ".join(problems),
                         "This is a bug: please report it with the command you ran.")


@dataclass(frozen=True)
class NewAnatomy:
    """A user-defined anatomy to create: name, optional colour (RGB 0-255) and ``SCHEME^VALUE^MEANING`` code."""

    name: str
    color: tuple[int, int, int] | None = None
    code: str | None = None


def _training_specs(data: str | Path | None, label_map, pairs: Sequence[Sequence[str]] | None,
                    names: Sequence[str], work: Path) -> tuple[list[CaseSpec], list[dict]]:
    """The dataset's scans plus the direct pairs (which teach the decoder's one anatomy)."""
    if data is None and not pairs:
        raise ClnetError("No training data.", "Pass --data (nnU-Net folder or CSV) and/or --pair IMAGE SEG SEGMENT.")
    specs = load_dataset(data, label_map) if data is not None else []
    record: list[dict] = []
    if pairs:
        if len(names) != 1:
            raise ClnetError(f"--pair teaches one anatomy, but the decoder has {len(names)}: {', '.join(names)}.",
                             "Train one anatomy per decoder when giving pairs, or use --data for several.")
        pair_specs, record = pair_cases(pairs, names[0], work / "pairs")
        specs += pair_specs
    return specs, record


def corrected_anatomies(old: Manifest, names: Sequence[str], catalog) -> dict[str, str]:
    """Anatomy → the decoder that owns it in ``old``, for each of ``names`` the model already has."""
    owner = {catalog.by_name(a).name: d for a, d in old.anatomy_owner().items() if a in catalog}
    return {n: owner[n] for n in names if n in owner}


def set_lineage(manifest: Manifest, old: Manifest, model_dir: Path, model_name: str | None) -> None:
    """Name, version counter, creation time and ``base_model`` of a new version made from ``old``."""
    manifest.name = model_name or old.name
    manifest.version = str(int(old.version) + 1) if old.version.isdigit() else f"{old.version}+1"
    manifest.created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest.base_model = {"name": old.name, "version": old.version,
                           "manifest_sha256": sha256_file(model_dir / "manifest.json")}


def _redact_paths(prov: dict, triples: Sequence[Sequence[str]]) -> None:
    """The recorded command line names the pairs' files, not their folders (which may say whose scan it is)."""
    import shlex

    command = prov.get("command", "")
    for image, seg, _ in triples:
        for f in (str(image), str(seg)):
            command = command.replace(shlex.quote(f), shlex.quote(Path(f).name)).replace(f, Path(f).name)
    prov["command"] = command


def _check_pairs_overlap(cases: Sequence[PreparedCase], pairs, labels: Sequence[int]) -> None:
    """Each pair's segment must land on its image's model grid (a segment outside the scan teaches nothing)."""
    for i, case in enumerate(c for c in cases if c.case_id.startswith("pair")):
        if not np.isin(case.labels, labels).any():
            image, seg, segment = pairs[i]
            raise ClnetError(f"Segment {segment!r} of {Path(seg).name} does not overlap {Path(image).name} "
                             "(nothing of it is left on the model's grid).",
                             "Pair each segmentation with the CT it was painted on.")


def _painted_window(loaded, specs: Sequence[CaseSpec], replaces: dict[str, str], names: Sequence[str]):
    """The new decoder's body-part window from its painted examples (see painted_window)."""
    from ..inference.gating import bodypart_scorer

    scorer, _source = bodypart_scorer(loaded)
    previous = None
    if names[0] in replaces:  # a correction: keep the old decoder's window for that anatomy inside
        previous = loaded.manifest.decoders[replaces[names[0]]].window_for([names[0]])
        if previous is None:  # the anatomy ran everywhere before: so does its correction
            return None
    return painted_window(scorer, [s for s in specs if s.case_id.startswith("pair")], previous)


def add_decoder(
    model_dir: str | Path,
    name: str,
    data: str | Path | None,
    anatomies: Sequence[str],
    output: str | Path,
    cfg: TrainConfig,
    width_scale: float = 0.5,
    label_map: str | Path | None = None,
    device: str = "auto",
    work_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    evaluate: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    pairs: Sequence[Sequence[str]] | None = None,
    new_anatomy: NewAnatomy | None = None,
    validate: Sequence[str] | None = None,
    model_name: str | None = None,
    report: Reporter | None = None,
) -> Manifest | None:
    """Train decoder ``name`` for ``anatomies`` on ``model_dir``'s frozen encoder; write ``output``.

    Training scans come from ``data`` (nnU-Net folder or CSV) and/or ``pairs`` of (image,
    segmentation, segment), each of which labels the decoder's single anatomy. ``new_anatomy`` adds a
    user-defined anatomy (beyond the catalog) that this decoder owns, recorded in the manifest. An
    anatomy the model already has is *corrected*: the new decoder owns it (``replaces`` in its
    manifest entry) and the old decoder's channel for it is ignored at inference.

    ``validate``: one held-out (image, segmentation, segment), never trained on; its Dice is computed
    about every 10 % of the steps and at the end (``info.validation``). ``model_name`` names the new
    version (default: the old name). ``report(stage, fraction, **fields)`` follows the run.
    """
    def say(stage: str, fraction: float, **fields) -> None:
        if report is not None:
            report(stage, fraction, **fields)

    model_dir, output = Path(model_dir), Path(output)
    if output.resolve() == model_dir.resolve():
        raise ClnetError("-o must differ from --model: the old model stays as it is.")
    if output.exists() and not overwrite:
        raise ClnetError(f"{output} already exists.", "Choose another -o folder or pass --overwrite.")
    dev = select_training_device(device)
    info, dev = init_distributed(dev)
    try:
        loaded = load_model(model_dir)
        old_manifest = loaded.manifest
        if name in old_manifest.decoders:
            raise ClnetError(f"Model {old_manifest.name} already has a decoder {name!r}.", "Pick another --name.")
        network: CLNet = loaded.network
        prep = old_manifest.preprocessing
        check_patch(cfg.patch_size_zyx, old_manifest.encoder)
        seed_everything(cfg.seed, cfg.deterministic)
        manifest = Manifest.from_dict(copy.deepcopy(old_manifest.to_dict()))
        if new_anatomy is not None:
            manifest.user_anatomies.append(new_user_anatomy(new_anatomy.name, manifest.user_anatomies, name,
                                                            new_anatomy.color, new_anatomy.code))
            anatomies = [*anatomies, manifest.user_anatomies[-1]["name"]]
        catalog = catalog_for(manifest)
        names = resolve_anatomies(anatomies, catalog)
        replaces = corrected_anatomies(old_manifest, names, catalog)
        work = Path(work_dir) if work_dir else output.parent / f"{output.name}.work"
        say("prepare", 0.0)
        specs, pair_record = _training_specs(data, label_map, pairs, names, work)
        cases = prepare_cases(specs, prep, cache_dir=cache_dir or work / "cache", catalog=catalog)
        _check_pairs_overlap(cases, pairs, catalog_labels(names, catalog))
        check_coverage(cases, name, names, catalog)
        window = _painted_window(loaded, specs, replaces, names) if pairs and data is None else None
        held_out = (prepare_held_out(validate, names, pair_record, prep, work, catalog)
                    if validate is not None else None)
        say("prepare", 1.0)

        old_names = list(old_manifest.decoders)
        probe = probe_patch(cases[0], prep.patch_size_zyx, pad_value(prep))
        with torch.inference_mode():
            reference = {d: v.clone() for d, v in network(probe, decoders=old_names).items()}
        encoder_before = module_digest(network.encoder)

        torch.manual_seed(cfg.seed)
        network.add_decoder(name, decoder_config(old_manifest.encoder, len(names) + 1, width_scale))
        rewind_at = max(1, cfg.steps // 20)
        every = max(1, cfg.steps // 10)
        t0 = time.perf_counter()
        first: list[tuple[int, float]] = []  # (step, time) of the first step this run made (resume-aware)

        def on_step(step: int, loss: float) -> None:
            if step + 1 == rewind_at and info.is_main:
                save_rewind_snapshot(work / "rewind", network, [name])
            if not info.is_main:
                return
            now = time.perf_counter()
            if not first:
                first.append((step, now))
            done_here = step + 1 - first[0][0]
            eta = (now - t0) / done_here * (cfg.steps - step - 1) if done_here > 0 else None
            say("train", (step + 1) / cfg.steps, step=step + 1, steps=cfg.steps, loss=round(float(loss), 5),
                eta_s=round(eta, 1) if eta is not None else None)
            if held_out is not None and (step + 1) % every == 0 and step + 1 < cfg.steps:
                dice = held_out.dice(network, name, dev)
                network.decoders[name].train()  # the Dice pass put it in eval mode; training goes on
                say("validate", (step + 1) / cfg.steps, step=step + 1, steps=cfg.steps, validation_dice=dice)

        result = fit(network, {name: catalog_labels(names, catalog)}, cases, cfg, pad_value(prep), train_encoder=False,
                     device=dev, work_dir=work, resume=resume, dist_info=info, progress=progress, on_step=on_step)
        validation = None
        if held_out is not None and info.is_main:
            validation = held_out.record(held_out.dice(network, name, dev))  # the saved (EMA) weights
            say("validate", 1.0, step=cfg.steps, steps=cfg.steps, validation_dice=validation["dice"])
        network.cpu().eval()
        if module_digest(network.encoder) != encoder_before:
            raise ModelError("The encoder changed during add-decoder training; nothing was written.",
                             "This is a bug: please report it.")
        if not info.is_main:
            barrier(info)
            return None
        for user in manifest.user_anatomies:  # a corrected user anatomy now belongs to the new decoder
            if user["name"] in replaces:
                user["decoder"] = name
        entry = DecoderEntry(name, names, network.decoders[name].config, replaces=replaces, bodypart_range=window,
                             anatomy_bodypart_ranges={names[0]: window} if window else {})
        entry.info = {
            "steps": cfg.steps,
            "stage": "add-decoder (frozen encoder)",
            "provenance": provenance("clnet add-decoder", str(data) if data else "pairs", cfg.steps, cfg.seed, result.seconds, dev,
                                     info.world_size, cfg.to_dict(),
                                     {"scans": [c.case_id for c in cases], "base_model": old_manifest.name,
                                      "final_loss": round(result.final_loss, 4)}),
        }
        if pair_record or validate:
            _redact_paths(entry.info["provenance"], [*(pairs or []), *([validate] if validate else [])])
        if pair_record:
            entry.info["training_pairs"] = pair_record  # file names and sha256 only
        if validation is not None:
            entry.info["validation"] = validation  # file names, sha256 and Dice
        manifest.decoders[name] = entry
        set_lineage(manifest, old_manifest, model_dir, model_name)
        if evaluate:
            say("verify", 0.0)
            dice = manifest.metrics.setdefault("dice_model_grid_training_scans", {})
            dice.update(evaluate_heads(network, manifest, [name], cases, torch.device("cpu")))
        say("verify", 0.5)
        save_model(network, manifest, output, overwrite=overwrite, copy_from=model_dir)
        verify_continual(model_dir, output, old_manifest, old_names, probe, reference)
        say("verify", 1.0)
        barrier(info)
        return manifest
    finally:
        cleanup(info)
