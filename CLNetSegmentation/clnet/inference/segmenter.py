"""The :class:`Segmenter`: load a model once, segment many CTs. CLI, Slicer and batch all use it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..catalog import Anatomy, load_catalog
from ..checkpoint import LoadedModel, load_model
from ..errors import ClnetError
from ..io import LoadedImage, read_image, validate_ct
from ..registry import resolve_model
from .device import describe_device, select_device
from .merge import LabelMerger, decoder_lookup
from .preprocessing import labels_to_input_grid, prepare
from .progress import CancelCheck, ProgressCallback, Reporter
from .sliding_window import count_tiles, sliding_window


@dataclass
class SegmentationResult:
    """A multilabel map on the input's own grid, with what it contains and how it was made."""

    labels: sitk.Image
    requested: list[Anatomy]
    present: list[Anatomy]
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def array(self) -> np.ndarray:
        """The label map as a (z, y, x) array (a view into the image's buffer)."""
        return sitk.GetArrayViewFromImage(self.labels)

    def label_map(self) -> dict:
        """JSON-ready description: label value → anatomy, plus the model and settings used."""
        present = {a.name for a in self.present}
        return {
            "labels": {
                str(a.label): {**a.to_dict(), "present": a.name in present} for a in self.requested
            },
            "settings": self.settings,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "warnings": self.warnings,
        }


class Segmenter:
    """Segments CTs with one CL-Net model.

    >>> seg = Segmenter()                       # the bundled default model, auto device
    >>> result = seg.segment("ct.nii.gz", anatomies=["Liver", "Spleen"])
    """

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, device: str | torch.device = "auto",
                 batch_size: int = 1) -> None:
        self.device = select_device(device)
        if isinstance(model, LoadedModel):
            self.model = model
            self.model.network.to(self.device)
        else:
            self.model = load_model(resolve_model(model), device=self.device)
        self.manifest = self.model.manifest
        self.catalog = load_catalog()
        self.batch_size = max(1, int(batch_size))
        unknown = [n for n in self.manifest.anatomy_owner() if not self._known(n)]
        if unknown:
            raise ClnetError(f"Model {self.manifest.name} outputs anatomies not in the catalog: {unknown[:5]}.",
                             "The model was made for another catalog version; update clnet.")

    def _known(self, name: str) -> bool:
        try:
            self.catalog.by_name(name)
            return True
        except ClnetError:
            return False

    @property
    def available(self) -> list[Anatomy]:
        """Catalog anatomies this model can segment, in label order."""
        names = {self.catalog.by_name(n).name for n in self.manifest.anatomy_owner()}
        return [a for a in self.catalog if a.name in names]

    def resolve(self, anatomies: Iterable[str] | None = None, regions: Iterable[str] | None = None) -> list[Anatomy]:
        """The anatomies to produce: the named ones and regions (all available when both are empty).

        Naming an anatomy the model cannot segment is an error; a region keeps what is available.
        """
        anatomies, regions = list(anatomies or []), list(regions or [])
        available = {a.name for a in self.available}
        if not anatomies and not regions:
            return self.available
        chosen = self.catalog.resolve(names=anatomies, regions=None) if anatomies else []
        missing = [a.name for a in chosen if a.name not in available]
        if missing:
            raise ClnetError(
                f"Model {self.manifest.name} cannot segment {', '.join(missing)}.",
                "Run `clnet anatomies` to see which anatomies this model offers, or use another --model.",
            )
        if regions:
            in_regions = [a for a in self.catalog.resolve(names=None, regions=regions) if a.name in available]
            if not in_regions:
                raise ClnetError(f"Model {self.manifest.name} segments nothing in region(s) {regions}.",
                                 "Run `clnet anatomies` to see what it offers.")
            chosen += in_regions
        seen, out = set(), []
        for a in sorted(chosen, key=lambda a: a.label):
            if a.name not in seen:
                seen.add(a.name)
                out.append(a)
        return out

    def segment(
        self,
        image: sitk.Image | LoadedImage | str | os.PathLike,
        anatomies: Sequence[str] | None = None,
        regions: Sequence[str] | None = None,
        fast: bool = False,
        force: bool = False,
        overlap: float | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck = None,
    ) -> SegmentationResult:
        """Segment one CT. The input is only read, never modified."""
        report = Reporter(progress, cancel)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        report("read", 0.0, "Reading image")
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, LoadedImage):
            image = image.image
        timings["read"] = time.perf_counter() - t

        t = time.perf_counter()
        report("check", 0.0, "Checking image")
        warnings = list(validate_ct(image, force=force))
        requested = self.resolve(anatomies, regions)
        timings["check"] = time.perf_counter() - t

        t = time.perf_counter()
        report("prepare", 0.0, "Resampling and normalising")
        prep = self.manifest.preprocessing
        prepared = prepare(image, prep, fast=fast)
        timings["prepare"] = time.perf_counter() - t

        wanted = {a.name for a in requested}
        owner = self.manifest.anatomy_owner()
        run = [d for d in self.manifest.decoders if any(owner.get(n) == d for n in wanted)]
        labels_by_name = {a.name: a.label for a in self.catalog}
        canon = {n: self.catalog.by_name(n).name for n in owner}
        lookups = {
            d: decoder_lookup([canon[n] for n in self.manifest.decoders[d].anatomies], labels_by_name, wanted)
            for d in run
        }
        merger = LabelMerger(prepared.data.shape, lookups, run)
        overlap = prep.overlap if overlap is None else float(overlap)
        total_tiles = count_tiles(prepared.data.shape, prep.patch_size_zyx, overlap)

        t = time.perf_counter()
        report("network", 0.0, f"Running {len(run)} decoder(s) on {total_tiles} tile(s)")
        pad_value = float((prep.normalization.clip_low - prep.normalization.mean) / prep.normalization.std)
        sliding_window(
            self.model.network, prepared.data, run, prep.patch_size_zyx, overlap, merger.add, self.device,
            batch_size=self.batch_size, sigma_scale=prep.gaussian_sigma_scale, pad_value=pad_value,
            on_tile=lambda done, total: report("network", done / total, f"Network: tile {done}/{total}"),
        )
        timings["network"] = time.perf_counter() - t

        t = time.perf_counter()
        report("merge", 0.0, "Mapping labels back to the input grid")
        labels = labels_to_input_grid(merger.labels, prepared.grid, image)
        present_labels = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0}
        present = [a for a in requested if a.label in present_labels]
        timings["merge"] = time.perf_counter() - t
        report("merge", 1.0, "Done")

        settings = {
            "clnet_version": __version__,
            "model": self.manifest.name,
            "model_version": self.manifest.version,
            "model_dir": str(self.model.directory) if self.model.directory else None,
            "demo_model": self.manifest.demo,
            "clinical_use": self.manifest.clinical_use,
            "device": describe_device(self.device),
            "fast": bool(fast and prep.fast_spacing_zyx),
            "spacing_zyx": list(prep.fast_spacing_zyx if (fast and prep.fast_spacing_zyx) else prep.spacing_zyx),
            "overlap": overlap,
            "decoders_run": run,
            "tiles": total_tiles,
            "conflict_voxels": merger.conflicts,
        }
        if fast and not prep.fast_spacing_zyx:
            warnings.append(f"Model {self.manifest.name} has no fast mode; ran at its normal spacing.")
        return SegmentationResult(labels, requested, present, settings, timings, warnings)
