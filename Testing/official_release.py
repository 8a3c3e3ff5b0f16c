"""A synthetic copy of the official CL-Net release, laid out as the model hub repository holds it.

Tiny random weights in the official checkpoint layout (the builders of ``test_official_import``:
``encoder.``, ``decoder_dict.<HEAD>.``, ``ema_dict.<HEAD>.``, pruning ``weight_orig``/``weight_mask``),
nnU-Net v1 plans.json, per-class bpr_scores.json, a ``public_bpr_model/`` folder in bpreg's layout, and the clutter a
real repository has (README, sidecar .pkl files the importer never reads, a second fold).
"""

from __future__ import annotations

import json
from pathlib import Path

from clnet.bodypart.bpreg_synthetic import random_state_dict, write_release_folder
from clnet.official.plans import OFFICIAL_WINDOWS, head_anatomies
from clnet.official.plans import official_label_table as _table
from test_official_import import TRAINER, _save, ema_of, fake_decoder, fake_encoder, plans_json

ENCODER_TASK = "Task001_SuperGeneralEncoder"
RESULTS = "clNet_release/results"  # not at the repository root: discovery must find it anywhere


def head_task(head: str) -> str:
    return next(r.source_task for r in _table() if r.head == head)


def bpr_scores(head: str) -> dict:
    """Per-class statistics shaped like the official bpr_scores.json (keys: label ids)."""
    lo, hi = OFFICIAL_WINDOWS[head]
    out = {}
    for i, name in enumerate(head_anatomies(head), start=1):
        out[str(i)] = {"name": name, "mn": lo - 2.0, "mx": hi + 2.0, "percentile_00_5": lo + 3.0,
                       "percentile_99_5": hi - 3.0, "mean": 12.0, "median": 12.0, "sd": 2.0}
    return out


def build_release(folder: Path, heads: list[str], seed: int = 0, decoder_base: int = 4) -> Path:
    """Write the release for ``heads`` under ``folder`` (the repository root); returns ``folder``."""
    results = folder / RESULTS
    base = results / "clNet" / "3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# clNet (synthetic test copy)\n")
    (folder / ".gitattributes").write_text("*.model filter=lfs diff=lfs merge=lfs -text\n")
    enc = fake_encoder(seed + 1)
    d = base / ENCODER_TASK / TRAINER
    d.mkdir(parents=True)
    (d / "plans.json").write_text(json.dumps(plans_json([3.0, 3.0, 3.0], (-995, 1265, -187.8, 490.7))))
    _save(d / "all" / "model_final_checkpoint.model", {f"encoder.{k}": v for k, v in enc.items()})
    (d / "all" / "model_final_checkpoint.model.pkl").write_bytes(b"not read")
    for n, head in enumerate(heads):
        raw = fake_decoder(seed + 10 + n, decoder_base, len(head_anatomies(head)) + 1)
        state = {f"decoder_dict.{head}.{k}": v for k, v in raw.items()}
        state.update({f"ema_dict.{head}.{k}": v for k, v in ema_of(raw, seed + 20 + n).items()})
        td = base / head_task(head) / TRAINER
        td.mkdir(parents=True)
        (td / "plans.json").write_text(json.dumps(plans_json([3.0, 3.0, 3.0], (-990, 1250, -180.0, 480.0))))
        (td / "bpr_scores.json").write_text(json.dumps(bpr_scores(head)))
        _save(td / "all" / "model_final_checkpoint.model", state)
        (td / "all" / "model_final_checkpoint.model.pkl").write_bytes(b"not read")
        (td / "all" / "progress.png").write_bytes(b"\x89PNG not needed")
    # bpreg's own layout (model.pt state dict, config.json, inference-settings.json) with random
    # weights: the importer converts it exactly as it would the release's.
    write_release_folder(results / "public_bpr_model", random_state_dict(seed))
    return folder
