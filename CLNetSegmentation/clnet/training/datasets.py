"""Labelled CT datasets for training: nnU-Net folders or CSV lists, mapped onto catalog names.

Every scan carries its own label map (label value → anatomy). The anatomies a scan's map names
are the ones it *labels*; every other anatomy is *unknown* for that scan (partial labelling), and
the loss must not treat it as background (see :mod:`clnet.training.losses`).

Scans are brought to the model grid with :func:`clnet.inference.preprocessing.prepare` — the very
function inference uses — and their labels with ``labels_to_model_grid``; the results are cached in
memory and, optionally, as ``.npy`` files so that repeated runs skip the resampling.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Catalog, load_catalog
from ..catalog.user import USER_LABEL_LAST
from ..errors import ClnetError
from ..inference.preprocessing import labels_to_model_grid, prepare
from ..manifest import Preprocessing

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Size of the label → class lookup tables: catalog labels and the reserved user range (1000+).
LABEL_TABLE_SIZE = USER_LABEL_LAST + 1


@dataclass
class CaseSpec:
    """One labelled scan on disk: label value → canonical catalog name for the values it labels."""

    case_id: str
    image: Path
    label: Path
    label_map: dict[int, str]
    ignored_names: list[str] = field(default_factory=list)  # names the catalog does not know


@dataclass
class PreparedCase:
    """A scan on the model grid: normalised image and labels as *catalog label values* (uint8/uint16)."""

    case_id: str
    image: np.ndarray  # float32 (z, y, x)
    labels: np.ndarray  # uint8/uint16 (z, y, x), catalog (or user) label values, 0 = background
    labelled: frozenset[int]  # catalog label values this scan labels (absent from the scan = truly absent)

    def targets(self, catalog_labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Lookup table catalog label → decoder class (0 = background) and the known-class mask.

        ``known[c]`` is False for decoder class c when this scan does not label that anatomy.
        """
        lut = np.zeros(LABEL_TABLE_SIZE, dtype=np.int64)
        known = np.zeros(len(catalog_labels) + 1, dtype=bool)
        known[0] = True
        for i, lab in enumerate(catalog_labels, start=1):
            lut[lab] = i
            known[i] = lab in self.labelled
        return lut, known


# ---------------------------------------------------------------------------------------- label maps


def _map_names(raw: dict[int, str], where: str) -> tuple[dict[int, str], list[str]]:
    """value → user name  ⇒  value → canonical catalog name (unknown names are reported, not fatal)."""
    catalog = load_catalog()
    out: dict[int, str] = {}
    ignored: list[str] = []
    for value, name in raw.items():
        if value == 0 or str(name).lower() in ("background", "bg"):
            continue
        a = catalog.get(str(name))
        if a is None:
            ignored.append(str(name))
            continue
        out[int(value)] = a.name
    if not out:
        raise ClnetError(f"The label map of {where} names no anatomy known to the catalog.",
                         "Use catalog names or TotalSegmentator names (see `clnet anatomies`).")
    return out, ignored


def read_label_map(source: str | Path | dict) -> dict[int, str]:
    """A label map from a JSON file or dict: either ``{"1": "liver"}`` or ``{"liver": 1}`` (nnU-Net v2)."""
    data = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ClnetError(f"Label map {source} must be a non-empty JSON object.")
    out: dict[int, str] = {}
    for k, v in data.items():
        if str(k).strip().lstrip("-").isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int):
            out[int(v)] = str(k)
        else:
            raise ClnetError(f"Label map entry {k!r}: {v!r} is neither value→name nor name→value.",
                             "nnU-Net region labels (lists) are not supported.")
    return out


# ---------------------------------------------------------------------------------------- dataset specs


def _nnunet_cases(root: Path) -> list[CaseSpec]:
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    ending = meta.get("file_ending", ".nii.gz")
    label_map, ignored = _map_names(read_label_map(meta.get("labels", {})), str(root / "dataset.json"))
    cases = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = lab.name[: -len(ending)]
        img = root / "imagesTr" / f"{case_id}_0000{ending}"
        if not img.is_file():
            raise ClnetError(f"{lab} has no image {img}.", "nnU-Net layout: imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz.")
        cases.append(CaseSpec(case_id, img, lab, label_map, ignored))
    return cases


def _csv_cases(path: Path, default_map: dict[int, str] | None) -> list[CaseSpec]:
    base = path.parent
    cases = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if not row.get("image") or not row.get("label"):
                raise ClnetError(f"{path} row {i + 2}: needs 'image' and 'label' columns.")
            raw = default_map
            if row.get("label_map"):
                raw = read_label_map((base / row["label_map"]).resolve())
            if raw is None:
                raise ClnetError(f"{path} row {i + 2} has no label_map and no --label-map was given.")
            image = (base / row["image"]).resolve()
            mapping, ignored = _map_names(raw, f"{path} row {i + 2}")
            case_id = row.get("case_id") or _strip_suffix(image.name)
            cases.append(CaseSpec(case_id, image, (base / row["label"]).resolve(), mapping, ignored))
    return cases


def _strip_suffix(name: str) -> str:
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def load_dataset(data: str | Path, label_map: str | Path | dict | None = None) -> list[CaseSpec]:
    """Read a dataset description: an nnU-Net folder (``dataset.json``) or a CSV of image/label pairs.

    CSV columns: ``image``, ``label`` and optionally ``label_map`` (JSON file) and ``case_id``;
    relative paths are relative to the CSV. ``label_map`` applies to rows without their own.
    """
    path = Path(data)
    default = read_label_map(label_map) if label_map is not None else None
    if path.is_dir() and (path / "dataset.json").is_file():
        cases = _nnunet_cases(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        cases = _csv_cases(path, default)
    else:
        raise ClnetError(f"{path} is neither an nnU-Net dataset folder nor a .csv file.",
                         "Pass a folder with dataset.json, imagesTr/ and labelsTr/, or a CSV with image,label columns.")
    if not cases:
        raise ClnetError(f"{path} lists no labelled scans.")
    for c in cases:
        for p in (c.image, c.label):
            if not p.is_file():
                raise ClnetError(f"Dataset file {p} does not exist.")
    return cases


# ---------------------------------------------------------------------------------------- preparation


def _cache_key(spec: CaseSpec, prep: Preprocessing, fast: bool) -> str:
    h = hashlib.sha256()
    for p in (spec.image, spec.label):
        st = os.stat(p)
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    # Only what changes the grid or the intensities matters; tiling settings do not.
    d = prep.to_dict()
    for k in ("overlap", "gaussian_sigma_scale", "patch_size_zyx"):
        d.pop(k, None)
    h.update(json.dumps([d, fast, sorted(spec.label_map.items())], sort_keys=True).encode())
    return h.hexdigest()[:24]


def prepare_case(spec: CaseSpec, prep: Preprocessing, fast: bool = False,
                 cache_dir: str | Path | None = None, catalog: Catalog | None = None) -> PreparedCase:
    """Bring one scan and its labels to the model grid exactly as inference does (cached when asked).

    ``catalog`` resolves the label map's names (default: the packaged one; a model's overlay with its
    user anatomies from :func:`clnet.catalog.user.catalog_for`).
    """
    catalog = catalog or load_catalog()
    labelled = frozenset(catalog.by_name(n).label for n in spec.label_map.values())
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        key = _cache_key(spec, prep, fast)
        img_f, lab_f = cache / f"{spec.case_id}-{key}-image.npy", cache / f"{spec.case_id}-{key}-labels.npy"
        if img_f.is_file() and lab_f.is_file():
            return PreparedCase(spec.case_id, np.load(img_f), np.load(lab_f), labelled)
    image = sitk.ReadImage(str(spec.image))
    label_img = sitk.ReadImage(str(spec.label))
    pv = prepare(image, prep, fast=fast)
    raw = labels_to_model_grid(label_img, pv.grid)
    # Remap the scan's own values to catalog label values so every scan speaks the same language.
    targets = {value: catalog.by_name(name).label for value, name in spec.label_map.items()}
    dtype = np.uint16 if max(targets.values()) > 255 else np.uint8
    lut = np.zeros(int(max(raw.max(), max(spec.label_map))) + 1, dtype=dtype)
    for value, label in targets.items():
        lut[value] = label
    labels = lut[np.clip(raw, 0, len(lut) - 1).astype(np.int64)]
    case = PreparedCase(spec.case_id, np.ascontiguousarray(pv.data, dtype=np.float32), labels, labelled)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        # Write under a temporary name then rename, so a crashed run never leaves half a cache entry.
        for arr, f in ((case.image, img_f), (case.labels, lab_f)):
            tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npy")  # unique per process (DDP ranks)
            np.save(tmp, arr)
            os.replace(tmp, f)
    return case


def prepare_cases(specs: Iterable[CaseSpec], prep: Preprocessing, fast: bool = False,
                  cache_dir: str | Path | None = None, catalog: Catalog | None = None) -> list[PreparedCase]:
    """Prepare every scan once (they then stay in memory for the whole run)."""
    out = []
    for s in specs:
        if s.ignored_names:
            log.warning("%s: label names not in the catalog are treated as background: %s", s.case_id,
                        ", ".join(sorted(set(s.ignored_names))[:10]))
        out.append(prepare_case(s, prep, fast, cache_dir, catalog))
    return out


def resolve_anatomies(names: Iterable[str], catalog: Catalog | None = None) -> list[str]:
    """Canonical catalog names (accepts aliases such as TotalSegmentator names); keeps the order."""
    catalog = catalog or load_catalog()
    out: list[str] = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        canon = catalog.by_name(n).name
        if canon in out:
            raise ClnetError(f"Anatomy {canon} is listed twice for one decoder.")
        out.append(canon)
    if not out:
        raise ClnetError("A decoder needs at least one anatomy.")
    return out


def catalog_labels(names: Sequence[str], catalog: Catalog | None = None) -> list[int]:
    """Label values of ``names`` in ``catalog`` (default: the packaged catalog)."""
    catalog = catalog or load_catalog()
    return [catalog.by_name(n).label for n in names]


def cases_labelling(cases: Sequence[PreparedCase], names: Sequence[str]) -> list[PreparedCase]:
    """The scans that label at least one of ``names`` (others cannot teach that decoder anything)."""
    wanted = set(catalog_labels(names))
    return [c for c in cases if c.labelled & wanted]
