"""Official plans.json, configuration JSON, body-part windows and the head → anatomy table."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..manifest import Normalization, Preprocessing

# Official inference settings that are not in the plans (official CLI / configuration module).
OFFICIAL_PATCH_SIZE = (112, 96, 128)  # z, y, x; the configs' "all" patch size and the code default
OFFICIAL_STEP_SIZE = 0.8  # sliding-window step as a fraction of the patch → our overlap 0.2
OFFICIAL_SIGMA_SCALE = 0.125  # Gaussian importance map sigma = patch / 8
OFFICIAL_BODY_THRESHOLD_HU = -200.0  # official coarse body mask threshold
OFFICIAL_PAD_VALUE = 0.0  # nnU-Net pads the *normalised* image with zeros
# Fallback CT statistics of the official configuration module (used when a plans file lacks them).
FALLBACK_CT = {"mean": -187.853, "sd": 490.705, "percentile_00_5": -995.0, "percentile_99_5": 1265.0}

# The gating windows the released configuration yields (reference doc, section 4): used only
# when neither a configuration JSON nor a bpr_scores.json next to the plans is available.
OFFICIAL_WINDOWS: dict[str, tuple[float, float]] = {
    "MERGED_HN1": (89.66, 103.12),
    "MERGED_HN2": (75.90, 103.16),
    "MERGED_HN3": (55.84, 111.88),
    "MERGED_CHEST1": (21.63, 100.28),
    "MERGED_CHEST2": (30.29, 97.07),
    "MERGED_ABDOMEN": (-3.85, 61.38),
    "MERGED_BONE": (-5.39, 134.15),
    "HN_LNS": (70.12, 91.54),
    "Chest_LNS": (48.52, 79.93),
}


@dataclass(frozen=True)
class OfficialLabel:
    head: str
    label_id: int
    anatomy: str
    source_task: str


def official_label_table() -> list[OfficialLabel]:
    """The packaged copy of the official decoders table (head, head-local id, anatomy, task)."""
    text = resources.files("clnet.official").joinpath("official_decoders.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter="\t")
    return [OfficialLabel(r["decoder"], int(r["label_id"]), r["anatomy"], r["source_task"]) for r in rows]


def head_anatomies(head: str, table: list[OfficialLabel] | None = None) -> list[str]:
    """Official anatomy names of ``head`` in channel order (channel i = head-local label i)."""
    rows = sorted((r for r in (table or official_label_table()) if r.head == head), key=lambda r: r.label_id)
    if not rows:
        raise ModelError(f"Unknown official decoder {head!r}.",
                         "clnet knows the nine released CL-Net heads (see clnet/official/official_decoders.tsv).")
    ids = [r.label_id for r in rows]
    if ids != list(range(1, len(ids) + 1)):
        raise ModelError(f"The official label ids of {head} are not 1..{len(ids)}: {ids}.")
    return [r.anatomy for r in rows]


def _int_keys(d: Any) -> Any:
    """JSON turns int keys into strings; nnU-Net converts them back (plans_per_stage, intensities)."""
    if isinstance(d, dict):
        return {(int(k) if isinstance(k, str) and re.fullmatch(r"-?\d+", k) else k): _int_keys(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_int_keys(v) for v in d]
    return d


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read the official {what} {path} ({exc}).") from exc


@dataclass
class OfficialPlans:
    """The fields of an official plans.json that inference needs."""

    path: Path
    stage: int
    spacing_zyx: tuple[float, float, float]
    patch_size_zyx: tuple[int, int, int]
    conv_kernels: list[tuple[int, ...]]
    pool_kernels: list[tuple[int, ...]]
    conv_per_stage: int | None
    normalization: Normalization
    normalization_source: str

    def preprocessing(self, patch_size_zyx: tuple[int, int, int] | None = None) -> Preprocessing:
        """Our :class:`Preprocessing` reproducing the official per-task settings."""
        return Preprocessing(
            spacing_zyx=self.spacing_zyx,
            fast_spacing_zyx=None,  # the official pipeline has no coarser mode
            patch_size_zyx=tuple(patch_size_zyx or OFFICIAL_PATCH_SIZE),  # type: ignore[arg-type]
            orientation="LPS",
            normalization=self.normalization,
            overlap=round(1.0 - OFFICIAL_STEP_SIZE, 6),
            gaussian_sigma_scale=OFFICIAL_SIGMA_SCALE,
            body_threshold_hu=OFFICIAL_BODY_THRESHOLD_HU,
        )


def read_plans(path: str | Path) -> OfficialPlans:
    """Parse an official (nnU-Net v1 JSON) plans file; 3d_fullres uses its last stage."""
    path = Path(path)
    plans = _int_keys(read_json(path, "plans file"))
    try:
        stages = plans["plans_per_stage"]
        stage = max(int(k) for k in stages)
        sp = stages[stage]
        spacing = tuple(float(v) for v in sp["current_spacing"])
        patch = tuple(int(v) for v in sp["patch_size"])
        conv_k = [tuple(int(v) for v in k) for k in sp.get("conv_kernel_sizes") or []]
        pool_k = [tuple(int(v) for v in k) for k in sp.get("pool_op_kernel_sizes") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"Official plans {path} lack plans_per_stage fields ({exc!r}).") from exc
    if len(spacing) != 3 or len(patch) != 3:
        raise ModelError(f"Official plans {path} are not 3D (spacing {spacing}).", "Only 3d_fullres models are imported.")
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if list(transpose) != [0, 1, 2]:
        raise ModelError(f"Official plans {path} transpose the axes ({transpose}); clnet expects [0, 1, 2].")
    schemes = plans.get("normalization_schemes") or {0: "CT"}
    scheme = schemes.get(0, next(iter(schemes.values()), "CT"))
    if scheme != "CT":
        raise ModelError(f"Official plans {path} use normalisation {scheme!r}; only 'CT' maps onto clnet.")
    if int(plans.get("num_modalities", 1)) != 1:
        raise ModelError(f"Official plans {path} expect {plans.get('num_modalities')} input channels; CL-Net uses CT only.")
    props = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    stats = props.get(0) if isinstance(props, dict) else None
    source = "plans intensityproperties"
    if not stats or any(stats.get(k) is None for k in FALLBACK_CT):
        stats, source = FALLBACK_CT, "official fallback constants (plans lack intensityproperties)"
    norm = Normalization(
        clip_low=float(stats["percentile_00_5"]), clip_high=float(stats["percentile_99_5"]),
        mean=float(stats["mean"]), std=float(stats["sd"]),
    )
    cps = plans.get("conv_per_stage")
    return OfficialPlans(
        path=path, stage=stage, spacing_zyx=spacing, patch_size_zyx=patch, conv_kernels=conv_k,  # type: ignore[arg-type]
        pool_kernels=pool_k, conv_per_stage=int(cps) if cps is not None else None, normalization=norm,
        normalization_source=source,
    )


def is_lesion_head(head: str) -> bool:
    """Official rule: lesion-like heads use the min/max window; 'lns' (lymph-node stations) are organs."""
    h = head.lower()
    return any(w in h for w in ("gtv", "tumor", "lesion")) or ("ln" in h and "lns" not in h)


def window_from_range(head: str, rng: dict[str, Any]) -> tuple[float, float]:
    """The body-part score window of a head from its official range statistics."""
    try:
        if is_lesion_head(head):
            return float(rng["min"]) - float(rng["std"]), float(rng["max"]) + float(rng["std"])
        margin = 0.25 * float(rng["mean"])
        return float(rng["percentile_00_5"]) - margin, float(rng["percentile_99_5"]) + margin
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"The body-part range of {head} is incomplete ({exc!r}).") from exc


def class_window(head: str, stats: dict[str, Any]) -> tuple[float, float]:
    """One anatomy's own body-part window from its official per-class statistics: the head rule
    applied to the class alone (organ heads: [p0.5, p99.5] widened by 0.25 × its mean extent, and at
    least :data:`~clnet.bodypart.ranges.MIN_ANATOMY_MARGIN`; lesion heads: [min - sd, max + sd])."""
    from ..bodypart.ranges import anatomy_window

    try:
        if is_lesion_head(head):
            return float(stats["mn"]) - float(stats["sd"]), float(stats["mx"]) + float(stats["sd"])
        return anatomy_window(float(stats["percentile_00_5"]), float(stats["percentile_99_5"]),
                              extent=float(stats["mean"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"The body-part statistics of a class of {head} are incomplete ({exc!r}).") from exc


def official_class_statistics() -> dict[str, dict[str, float]]:
    """The released model's per-class body-part statistics by official anatomy name.

    Packaged copy of the ``bpr_cls_details`` of clnet/training_cfg_json/CSS_Train_Merged_ALL_pred_cleaned.json
    in the official repository (commit 4dacccb): ``percentile_00_5`` / ``percentile_99_5`` of the slice
    scores each class covers, ``mean`` / ``sd`` of its per-case extent, ``mn`` / ``mx`` over all cases.
    Used when an official results tree has no bpr_scores.json, and by the benchmark's stand-in model.
    """
    text = resources.files("clnet.official").joinpath("official_class_bpr.tsv").read_text(encoding="utf-8")
    return {r["anatomy"]: {k: float(v) for k, v in r.items() if k != "anatomy"}
            for r in csv.DictReader(io.StringIO(text), delimiter="\t")}


def head_class_windows(head: str, official_names: list[str], labels: list[int],
                       scores: dict[str, Any] | None = None) -> tuple[dict[str, tuple[float, float]], str]:
    """Each anatomy's own window for ``head`` (official names, channel order; ``labels`` their dataset
    label ids), from a task's bpr_scores.json (keyed by label id) when it covers every class, else
    from the packaged statistics; empty when neither covers them all."""
    if isinstance(scores, dict):
        rows = [scores.get(str(i)) for i in labels]
        if rows and all(isinstance(r, dict) for r in rows):
            try:
                return ({n: class_window(head, r) for n, r in zip(official_names, rows)},
                        "bpr_scores.json (per-class statistics)")
            except ModelError:
                pass
    known = official_class_statistics()
    if all(n in known for n in official_names):
        return ({n: class_window(head, known[n]) for n in official_names},
                "official per-class statistics (packaged table)")
    return {}, "none"


def head_range_from_class_scores(scores: dict[str, Any], labels: list[int]) -> dict[str, float] | None:
    """Combine per-class statistics (bpr_scores.json, keyed by label id) into the head range."""
    rows = [scores[str(i)] for i in labels if isinstance(scores.get(str(i)), dict)]
    if not rows or len(rows) != len(labels):
        return None
    try:
        return {
            "percentile_00_5": min(float(r["percentile_00_5"]) for r in rows),
            "percentile_99_5": max(float(r["percentile_99_5"]) for r in rows),
            "min": min(float(r["mn"]) for r in rows),
            "max": max(float(r["mx"]) for r in rows),
            "mean": max(float(r["mean"]) for r in rows),
            "std": max(float(r["sd"]) for r in rows),
        }
    except (KeyError, TypeError, ValueError):
        return None


def parse_label_spec(spec: Any) -> list[int]:
    """Official label list forms: an int, a list of ints, or a string such as "1-26" / "1, 3, 5-7"."""
    if isinstance(spec, bool):
        raise ModelError(f"Invalid official label specification {spec!r}.")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list):
        out: list[int] = []
        for s in spec:
            out += parse_label_spec(s)
        return out
    if isinstance(spec, str):
        out = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)-(\d+)", part)
            out += list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(part)]
        return out
    raise ModelError(f"Invalid official label specification {spec!r}.")


@dataclass
class ConfigTask:
    """One task entry of an official configuration JSON."""

    key: str
    task: str
    fold: str  # "all" or "fold_N"
    heads: dict[str, list[int]]
    checkpoint_name: str | None
    patch_size: dict[str, tuple[int, int, int]]
    bpr_range: dict[str, dict[str, Any]]
    ema_enabled: dict[str, bool]
    is_encoder: bool
    output_folder: str | None = None  # absolute path on the authors' machine; used when it exists here


def read_config(path: str | Path) -> tuple[list[ConfigTask], str | None]:
    """Parse an official training/inference JSON (raw or ``*_pred_cleaned.json``).

    Returns the task entries and the general-encoder entry key.
    """
    data = read_json(Path(path), "configuration")
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not an official CL-Net configuration JSON.")
    ge_key = data.get("clnet_general_encoder")
    tasks = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or "task" not in entry:
            continue
        fold = entry.get("fold", "all")
        fold_name = "all" if str(fold) == "all" else f"fold_{int(fold)}"
        mts = entry.get("model_training_setup") or {}
        patches = {}
        for head, p in (mts.get("patch_size") or {}).items():
            if isinstance(p, list) and len(p) == 3:
                patches[head] = tuple(int(v) for v in p)
        decoders = entry.get("decoders") or {}
        heads = {h: parse_label_spec(spec) for h, spec in decoders.items()}
        setup = mts.get("decoders") or {}
        arch = entry.get("decoder_architecture_setup") or {}
        ema = {}
        for h in heads:
            flags = setup.get(h, setup.get("all"))
            ema_flag = flags[-1] if isinstance(flags, list) and flags else True
            arch_flag = arch.get(h, {}).get("enable_ema", True) if isinstance(arch.get(h), dict) else True
            ema[h] = bool(ema_flag) and bool(arch_flag)
        is_ge = key == ge_key or entry.get("type") == "GeneralEncoder"
        tasks.append(ConfigTask(
            key=key, task=str(entry["task"]), fold=fold_name, heads=heads,
            checkpoint_name=entry.get("pretrain_model_name"), patch_size=patches,
            bpr_range=dict(entry.get("bpr_range_for_decoders") or {}), ema_enabled=ema, is_encoder=bool(is_ge),
            output_folder=entry.get("output_folder_name"),
        ))
    if not tasks:
        raise ModelError(f"{path} names no tasks; it is not an official CL-Net configuration JSON.")
    return tasks, ge_key
