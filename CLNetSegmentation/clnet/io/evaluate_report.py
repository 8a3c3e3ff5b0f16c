"""``clnet evaluate``: compare a prediction with a reference anatomy by anatomy, whatever their label values.

Both label maps are read as anatomies: a ``{"value": "name"}`` JSON map (names resolved through the
catalog, so TotalSegmentator's class names work), a clnet ``segmentation.json``, or by default the
catalog's own label values. A ``segmentation.json`` also describes the model's user-defined anatomies
(label 1000 and up, ``source: "user"``); those of the prediction's map are known when the reference
is read too, by name in a ``{"value": "name"}`` map and by label value by default. Which anatomies count:

- an anatomy is **evaluated** when both sides can hold it (the prediction's map names it, e.g. it was
  requested from the model, and the reference's map labels it) and at least one side contains it;
- **absent from both**: evaluated but empty on both sides; no score, not in the means;
- **not in the prediction's map**: present in the reference but the prediction could not contain it
  (a model without lungs against a map with lungs); listed, not scored;
- **not labelled in the reference**: present in the prediction but the reference's map has no such
  class; listed, not scored.

Dice is 0 when exactly one side is empty; the surface distances are then undefined (null) and are
left out of their means. The mean Dice is taken over the evaluated anatomies.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Anatomy, load_catalog
from ..catalog.user import from_label_entry
from ..errors import InputError
from .evaluate import _label_array, surface_distances
from .geometry import require_same_grid
from .read import read_image

SEGMENTATION_JSON = "segmentation.json"


@dataclass
class LabelMap:
    """Which label values stand for which anatomy, and where that knowledge came from."""

    values: dict[Anatomy, list[int]]  # an anatomy may have several values (merged as one mask)
    source: str
    complete: bool  # True: an anatomy not listed cannot be in the image (an explicit map)
    unknown: dict[int, str] = field(default_factory=dict)  # values whose names the catalog does not know
    user: list[Anatomy] = field(default_factory=list)  # user-defined anatomies its segmentation.json describes


def catalog_label_map(user: Sequence[Anatomy] = ()) -> LabelMap:
    """Values are catalog labels (clnet's own outputs), and ``user`` anatomies' labels."""
    source = "catalog label values" + (" and the prediction's user anatomies" if user else "")
    return LabelMap({a: [a.label] for a in [*load_catalog(), *user]}, source, complete=False, user=list(user))


def _resolver(known: list[Anatomy]) -> Callable[[str], Anatomy | None]:
    """Name → anatomy: ``known`` user anatomies first (by name, any case), then the catalog."""
    catalog = load_catalog()

    def resolve(name: str) -> Anatomy | None:
        key = name.strip().lower()
        return next((a for a in known if a.name.lower() == key), None) or catalog.get(name)

    return resolve


def read_label_map(path: str | Path, user: Sequence[Anatomy] = ()) -> LabelMap:
    """A ``{"value": "name"}`` JSON file, or a clnet ``segmentation.json`` (its ``labels``).

    Names are resolved through ``user`` (user anatomies known already, e.g. the prediction's), the
    user anatomies the file itself describes, then the catalog.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read label map '{path}' ({exc.strerror or exc}).", "Check the path.") from None
    except ValueError as exc:
        raise InputError(f"Label map '{path}' is not valid JSON ({exc}).",
                         'Give a JSON object {"1": "spleen", ...} or a clnet segmentation.json.') from None
    known = list(user)
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):  # clnet's segmentation.json
        for entry in data["labels"].values():
            own = from_label_entry(entry)
            if own is not None and all(a.name.lower() != own.name.lower() for a in known):
                known.append(own)
        data = {k: v.get("name") if isinstance(v, dict) else v for k, v in data["labels"].items()}
    if not isinstance(data, dict) or not data:
        raise InputError(f"Label map '{path}' holds no value → name pairs.",
                         'Give a JSON object {"1": "spleen", ...} or a clnet segmentation.json.')
    resolve = _resolver(known)
    values: dict[Anatomy, list[int]] = {}
    unknown: dict[int, str] = {}
    for key, name in data.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise InputError(f"Label map '{path}' has a key {key!r} that is not a label value.",
                             'Keys must be integers: {"1": "spleen", ...}.') from None
        if value == 0:
            continue  # background
        anatomy = resolve(name) if isinstance(name, str) else None
        if anatomy is None:
            unknown[value] = str(name)
        else:
            values.setdefault(anatomy, []).append(value)
    return LabelMap(values, str(path), complete=True, unknown=unknown,
                    user=[a for a in known if a.source == "user"])


def _prediction_map(prediction: Path, explicit: str | Path | None) -> LabelMap:
    if explicit is not None:
        return read_label_map(explicit)
    beside = prediction.parent / SEGMENTATION_JSON
    if prediction.name.startswith("segmentation.") and beside.is_file():
        return read_label_map(beside)
    return catalog_label_map()


@dataclass
class Report:
    """Per-anatomy scores and the anatomies left out, with why."""

    prediction: str
    reference: str
    prediction_labels: str
    reference_labels: str
    spacing_mm: tuple[float, float, float]
    rows: list[dict]
    absent_from_both: list[str]
    not_in_prediction_map: list[str]
    not_in_reference_map: list[str]
    unknown_reference_labels: dict[int, str]
    unknown_prediction_labels: dict[int, str]

    def mean(self, key: str) -> tuple[float | None, int]:
        values = [r[key] for r in self.rows if r[key] is not None]
        return (float(np.mean(values)) if values else None), len(values)

    def to_dict(self) -> dict:
        means = {}
        for key in ("dice", "hd95_mm", "msd_mm"):
            value, n = self.mean(key)
            means[key] = None if value is None else round(value, 4)
            means[f"n_{key}"] = n
        return {
            "prediction": self.prediction, "reference": self.reference,
            "prediction_labels": self.prediction_labels, "reference_labels": self.reference_labels,
            "spacing_mm": list(self.spacing_mm), "anatomies": self.rows, "mean": means,
            "absent_from_both": self.absent_from_both, "not_in_prediction_map": self.not_in_prediction_map,
            "not_in_reference_map": self.not_in_reference_map,
            "unknown_reference_labels": {str(k): v for k, v in self.unknown_reference_labels.items()},
            "unknown_prediction_labels": {str(k): v for k, v in self.unknown_prediction_labels.items()},
            "definition": "Evaluated: anatomies both label maps can hold, present in at least one image. Dice "
                          "0 when one side is empty; distances (mm) only when both are non-empty. "
                          "hd95 = max of the two directed 95th percentiles, msd = mean of both directions.",
        }


class _Indexed:
    """One label map as anatomy indices: voxel counts and bounding boxes from a single pass each."""

    def __init__(self, array: np.ndarray, label_map: LabelMap, order: dict[Anatomy, int]) -> None:
        from scipy import ndimage

        top = int(array.max(initial=0))
        lut = np.zeros(top + 1, dtype=np.uint16)
        for anatomy, values in label_map.values.items():
            for v in values:
                if 0 < v <= top:
                    lut[v] = order[anatomy]
        self.index = lut[array]
        self.counts = np.bincount(self.index.ravel(), minlength=len(order) + 1)
        self.boxes = ndimage.find_objects(self.index, max_label=len(order))

    def box(self, i: int) -> tuple[slice, ...] | None:
        return self.boxes[i - 1] if self.counts[i] else None


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape) -> tuple[slice, ...]:
    """The box around both, one voxel wider where the image allows (so surfaces are found right)."""
    boxes = [x for x in (a, b) if x is not None]
    return tuple(slice(max(min(x[k].start for x in boxes) - 1, 0), min(max(x[k].stop for x in boxes) + 1, n))
                 for k, n in enumerate(shape))


def evaluate_images(pred: sitk.Image, ref: sitk.Image, pred_map: LabelMap, ref_map: LabelMap,
                    distances: bool = True, names: Mapping[str, str] | None = None) -> Report:
    """Score ``pred`` against ``ref`` (same grid) anatomy by anatomy; see the module docstring."""
    require_same_grid(ref, pred, "reference", "prediction")
    shape = sitk.GetArrayViewFromImage(pred).shape
    p_arr = _label_array(pred, "prediction").reshape(shape)
    r_arr = _label_array(ref, "reference").reshape(shape)
    spacing_zyx = tuple(reversed(pred.GetSpacing()))
    anatomies = sorted(set(pred_map.values) | set(ref_map.values), key=lambda a: a.label)
    order = {a: i for i, a in enumerate(anatomies, start=1)}
    p_idx, r_idx = _Indexed(p_arr, pred_map, order), _Indexed(r_arr, ref_map, order)
    both = np.bincount(p_idx.index[p_idx.index == r_idx.index].ravel(), minlength=len(order) + 1)
    rows, absent, not_in_pred, not_in_ref = [], [], [], []
    listed = pred_map.complete or ref_map.complete  # else "absent" would list the whole catalog
    for anatomy, i in order.items():
        p_n, r_n = int(p_idx.counts[i]), int(r_idx.counts[i])
        if anatomy not in pred_map.values:
            if r_n:
                not_in_pred.append(anatomy.name)
            continue
        if anatomy not in ref_map.values:
            if p_n:
                not_in_ref.append(anatomy.name)
            continue
        if not p_n and not r_n:
            if listed:
                absent.append(anatomy.name)
            continue
        row = {"label": anatomy.label, "name": anatomy.name, "display_name": anatomy.display_name,
               "dice": round(2.0 * int(both[i]) / (p_n + r_n), 4), "hd95_mm": None, "msd_mm": None,
               "prediction_voxels": p_n, "reference_voxels": r_n}
        if distances and p_n and r_n:
            box = _union_box(p_idx.box(i), r_idx.box(i), p_arr.shape)
            hd95, msd = surface_distances(p_idx.index[box] == i, r_idx.index[box] == i, spacing_zyx)
            row["hd95_mm"], row["msd_mm"] = round(hd95, 2), round(msd, 2)
        rows.append(row)
    names = names or {}
    return Report(names.get("prediction", ""), names.get("reference", ""), pred_map.source, ref_map.source,
                  tuple(round(s, 4) for s in pred.GetSpacing()), rows, absent, not_in_pred, not_in_ref,
                  ref_map.unknown, pred_map.unknown)


def evaluate_files(prediction: str | Path, reference: str | Path, prediction_labels: str | Path | None = None,
                   reference_labels: str | Path | None = None, distances: bool = True) -> Report:
    """:func:`evaluate_images` on two label-map files; a ``segmentation.json`` beside a clnet
    prediction is used as its map unless ``prediction_labels`` is given."""
    prediction, reference = Path(prediction), Path(reference)
    pred_map = _prediction_map(prediction, prediction_labels)
    user = pred_map.user  # the model's own anatomies: the reference may label them too
    ref_map = read_label_map(reference_labels, user) if reference_labels is not None else catalog_label_map(user)
    pred, ref = read_image(prediction).image, read_image(reference).image
    return evaluate_images(pred, ref, pred_map, ref_map, distances=distances,
                           names={"prediction": str(prediction), "reference": str(reference)})


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_report(report: Report, fmt: str = "table") -> str:
    """The report as ``table`` (for people), ``csv`` (one row per anatomy) or ``json`` (everything)."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=1) + "\n"
    columns = ["label", "name", "dice", "hd95_mm", "msd_mm", "prediction_voxels", "reference_voxels"]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in report.rows])
        return buffer.getvalue()
    lines = [f"prediction {report.prediction} ({report.prediction_labels})",
             f"reference  {report.reference} ({report.reference_labels})",
             f"spacing    {' x '.join(f'{s:g}' for s in report.spacing_mm)} mm", "",
             f"{'label':>5}  {'anatomy':<26} {'Dice':>6} {'HD95 mm':>8} {'MSD mm':>7} {'voxels pred/ref':>17}"]
    for r in report.rows:
        lines.append(f"{r['label']:5d}  {r['name']:<26} {r['dice']:6.3f} {_fmt(r['hd95_mm'], 1):>8} "
                     f"{_fmt(r['msd_mm'], 2):>7} {r['prediction_voxels']:>8}/{r['reference_voxels']:<8}")
    lines.append("")
    dice, n = report.mean("dice")
    hd95, n_hd = report.mean("hd95_mm")
    msd, _ = report.mean("msd_mm")
    if n:
        lines.append(f"mean Dice {dice:.4f} over {n} anatomies (present in the prediction or the reference, "
                     "among those both label maps can hold)")
    else:
        lines.append("no anatomy to evaluate: the two label maps share no anatomy present in either image")
    if n_hd:
        lines.append(f"mean HD95 {hd95:.1f} mm, mean MSD {msd:.2f} mm over the {n_hd} anatomies present in both")
    for title, items in (("absent from both", report.absent_from_both),
                         ("in the reference, but the prediction's map does not hold them",
                          report.not_in_prediction_map),
                         ("in the prediction, but the reference's map does not label them",
                          report.not_in_reference_map)):
        if items:
            lines.append(f"{title} ({len(items)}): {', '.join(items)}")
    if report.unknown_reference_labels:
        lines.append("reference labels the catalog does not know (ignored): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(report.unknown_reference_labels.items())))
    if report.unknown_prediction_labels:
        lines.append("prediction labels the catalog does not know (ignored): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(report.unknown_prediction_labels.items())))
    return "\n".join(lines) + "\n"
