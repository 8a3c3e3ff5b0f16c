"""The :class:`Segmenter`: load a model once, segment many CTs. CLI, Slicer and batch all use it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..bodypart import BodyPartModel, BpregModel
from ..catalog import Anatomy
from ..catalog.user import catalog_for
from ..checkpoint import LoadedModel, load_model
from ..errors import ClnetError
from ..io import LoadedImage, read_image, validate_ct
from ..manifest import OfficialCompat, Preprocessing
from ..registry import resolve_model
from .device import describe_device, select_device, select_precision
from .gating import Gate, bodypart_scorer, scoring_record
from .locate import LOCATE_MARGIN_MM, labelled_corners, tiling_region
from .merge import LabelMerger, decoder_lookup, labels_present, merge_claims
from .official_crop import gated_slices
from .preprocessing import Geometry, labels_to_input_grid, oriented, prepare
from .progress import CancelCheck, ProgressCallback, Reporter
from .resources import check_memory, estimate_memory, oom_fallback
from .sliding_window import sliding_window
from .tiling import count_tiles


@dataclass
class SegmentationResult:
    """A multilabel map on the input's own grid, with what it contains and how it was made."""

    labels: sitk.Image
    requested: list[Anatomy]
    present: list[Anatomy]
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    decoder_labels: dict[str, sitk.Image] = field(default_factory=dict)
    decoder_channels: dict[str, dict[str, str]] = field(default_factory=dict)  # head → {local value: name}

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
            **({"decoder_label_files": self.decoder_channels} if self.decoder_labels else {}),
        }


class Segmenter:
    """Segments CTs with one CL-Net model.

    >>> seg = Segmenter()                       # the bundled default model, auto device
    >>> result = seg.segment("ct.nii.gz", anatomies=["Liver", "Spleen"])

    ``precision``: ``auto`` (bf16 autocast on a GPU, float32 on the CPU), ``float32`` or ``bf16``
    (also on a CPU with native bf16: about 1.5× faster, labels differ slightly; see
    :func:`.select_precision`).

    ``official_compat``: follow the official CL-Net pipeline where it differs from clnet's
    (:class:`clnet.manifest.OfficialCompat`): ``True`` / ``"on"`` every option, ``False`` / ``"off"``
    none, ``None`` what the model's manifest says (on for models made by ``clnet import-official``).
    """

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, device: str | torch.device = "auto",
                 batch_size: int = 1, gating: bool = True, precision: str = "auto",
                 official_compat: bool | str | None = None) -> None:
        self.device = select_device(device)
        self.precision = precision
        self.official_compat = _compat_switch(official_compat)
        select_precision(precision, self.device)  # a bad value or an unsupported CPU fails here, not mid-run
        if isinstance(model, LoadedModel):
            self.model = model
            self.model.network.to(self.device)
        else:
            self.model = load_model(resolve_model(model), device=self.device)
        self.manifest = self.model.manifest
        self.catalog = catalog_for(self.manifest)  # the catalog plus the model's user anatomies
        self.batch_size = max(1, int(batch_size))
        self.gating = gating
        self._bodypart: tuple[BodyPartModel | BpregModel, str] | None = None
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
        per_decoder: bool = False,
        locate: bool | None = None,
        official_compat: bool | str | None = None,
    ) -> SegmentationResult:
        """Segment one CT. The input is only read, never modified.

        ``locate``: first find the requested anatomies with a fast-mode pass and tile only their box
        at the normal spacing (:mod:`.locate`). Default: on for a subset in normal mode, off when
        every anatomy of the decoders that run is asked for (the box would be the whole body).

        With ``per_decoder`` the result also holds each decoder's own label map (head-local
        values 1..K, as the official CL-Net pipeline writes them) in ``result.decoder_labels``.
        ``official_compat`` overrides the Segmenter's setting for this call (see the class).
        """
        report = Reporter(progress, cancel)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        report("read", 0.0, "Reading image")
        # An image this call reads itself is nobody else's: its voxels are let go as soon as the last
        # preprocessing group has been prepared (only its geometry is needed after that).
        owned = isinstance(image, (str, os.PathLike))
        if owned:
            image = read_image(image)
        if isinstance(image, LoadedImage):
            image = image.image
        timings["read"] = time.perf_counter() - t

        t = time.perf_counter()
        report("check", 0.0, "Checking image")
        warnings = list(validate_ct(image, force=force))
        requested = self.resolve(anatomies, regions)
        if overlap is not None and not 0.0 <= float(overlap) <= 0.9:
            raise ClnetError(f"Tile overlap {overlap} is out of range.", "Use a value from 0 to 0.9.")
        compat, compat_source = self._compat(official_compat, warnings)

        wanted = {a.name for a in requested}
        owner = self.manifest.anatomy_owner()
        run = [d for d in self.manifest.decoders if any(owner.get(n) == d for n in wanted)]
        labels_by_name = {a.name: a.label for a in self.catalog}
        canon = {n: self.catalog.by_name(n).name for n in owner}
        # A decoder's channel for an anatomy that a correction now owns maps to background: the
        # replacement alone decides it (manifest ``replaces``); the decoder's other channels are unchanged.
        lookups = {
            d: decoder_lookup([canon[n] for n in self.manifest.decoders[d].anatomies], labels_by_name,
                              wanted - {canon[n] for n in self.manifest.ignored_channels(d)})
            for d in run
        }
        estimate = estimate_memory(image.GetSize(), image.GetSpacing(), self.manifest, run, fast, self.batch_size)
        warnings += check_memory(estimate)
        timings["check"] = time.perf_counter() - t
        gate, scoring = self._gate(image, run, wanted, warnings, report)
        groups = self._preprocessing_groups(run, compat)
        geometry = Geometry.of(image)
        source = _Source(image, release_after=len(groups) - 1 if owned else None)
        del image
        if locate is None:
            locate = not all(canon[n] in wanted for d in run for n in self.manifest.decoders[d].anatomies)
        boxes, located = (self._locate(source, groups, lookups, overlap, report, timings, warnings, gate, compat)
                          if locate and not fast else ([None] * len(groups), {"used": False}))
        # One group (the usual case): its label image on the input grid is the result as it is.
        # Several groups: merged in NumPy by confidence. Either way no whole-volume copy is made
        # beyond what the merge itself needs.
        label_image: sitk.Image | None = None
        first_confidence: sitk.Image | None = None
        merged: tuple[np.ndarray, np.ndarray] | None = None
        conflicts, total_tiles = 0, 0
        heads: dict[str, sitk.Image] = {}
        tiles_run: dict[str, int] = {}
        slabs: list[list[int] | None] = []
        for index, (prep, decs) in enumerate(groups):
            group_labels, group_confidence, overruled, tiles = self._run_group(
                source, prep, decs, lookups, fast, overlap, report, timings, (index, len(groups)), heads,
                warnings, tiles_run, keep_heads=per_decoder, gate=gate, slabs=slabs, box=boxes[index],
                regions=located.setdefault("regions", []), compat=compat,
            )
            conflicts += overruled
            total_tiles += tiles
            t = time.perf_counter()
            if index == 0:
                label_image, first_confidence = group_labels, group_confidence
            else:
                if merged is None:
                    merged = (sitk.GetArrayFromImage(label_image), sitk.GetArrayFromImage(first_confidence))
                    label_image = first_confidence = None
                if group_labels.GetPixelID() == sitk.sitkUInt16 and merged[0].dtype == np.uint8:
                    merged = (merged[0].astype(np.uint16), merged[1])  # a later group holds user labels
                conflicts += merge_claims(merged[0], merged[1], sitk.GetArrayViewFromImage(group_labels),
                                          sitk.GetArrayViewFromImage(group_confidence))
            timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if merged is not None:
            label_image = geometry.apply(sitk.GetImageFromArray(merged[0]))
            del merged
        elif label_image is None:  # nothing to run
            label_image = geometry.apply(sitk.Image(geometry.size, sitk.sitkUInt8))
        present_labels = labels_present(sitk.GetArrayViewFromImage(label_image))
        present = [a for a in requested if a.label in present_labels]
        timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - t
        report("merge", 1.0, "Done")
        prep = groups[0][0] if groups else self.manifest.preprocessing
        overlap = prep.overlap if overlap is None else float(overlap)

        settings = {
            "clnet_version": __version__,
            "model": self.manifest.name,
            "model_version": self.manifest.version,
            "model_dir": str(self.model.directory) if self.model.directory else None,
            "demo_model": self.manifest.demo,
            "clinical_use": self.manifest.clinical_use,
            "device": describe_device(self.device),
            "precision": str(select_precision(self.precision, self.device) or torch.float32).removeprefix("torch."),
            "fast": bool(fast and prep.fast_spacing_zyx),
            "spacing_zyx": list(prep.fast_spacing_zyx if (fast and prep.fast_spacing_zyx) else prep.spacing_zyx),
            "overlap": overlap,
            "decoders_run": run,
            "preprocessing_groups": len(groups),
            "tiles": total_tiles,
            "tiles_run": tiles_run,  # tiles the encoder / each decoder ran on (air and gating skip some)
            "estimated_peak_ram_gb": round(estimate.peak_bytes / 2**30, 2),
            "conflict_voxels": conflicts,
            "bodypart_gating": {
                "used": gate is not None,
                "windows": ({d: list(w) if w else None for d, w in gate.windows.items()} if gate else {}),
                "skipped_tile_rows": gate.skipped_rows if gate else 0,
                # Which network scored the slices (model's own or clnet's bundled one), the scores'
                # range and slope, and why they were not used when they were not.
                "scorer": scoring,
                # Per preprocessing group: [first, last + 1) of the model-grid slices the network ran
                # on, and how many slices that grid has (None: no decoder applied anywhere).
                "slabs": slabs,
            },
            # The coarse pass for subsets: its tiles, whether it found the anatomies (per group), and
            # per group the [start, stop) along z, y, x of the model grid the normal pass tiled.
            "locate": located,
            # Where this run followed the official CL-Net pipeline (docs/official.md), and who said so.
            "official_compat": {"enabled": compat.enabled, "source": compat_source, **compat.to_dict()},
        }
        if fast and not prep.fast_spacing_zyx:
            warnings.append(f"Model {self.manifest.name} has no fast mode; ran at its normal spacing.")
        channels = {d: {str(i): n for i, n in enumerate(self.manifest.decoders[d].anatomies, 1)} for d in heads}
        return SegmentationResult(label_image, requested, present, settings, timings, warnings, heads, channels)

    def _bodypart_model(self) -> tuple[BodyPartModel | BpregModel, str]:
        """The model's own body-part network if it has one (manifest ``bodypart``, verified when the model
        was loaded), else the bundled one; loaded once. Also says which one it is."""
        if self._bodypart is None:
            self._bodypart = bodypart_scorer(self.model)
        return self._bodypart

    def _gate(self, image: sitk.Image, decoders: Sequence[str], wanted: set[str], warnings: list[str],
              report: Reporter | None = None) -> tuple[Gate | None, dict | None]:
        """The body-part gate for this image (None: nothing gated) and a record of the scoring."""
        windows = {}
        for d in decoders:
            entry = self.manifest.decoders[d]
            windows[d] = entry.window_for(n for n in entry.anatomies if self.catalog.by_name(n).name in wanted)
        if not self.gating or all(w is None for w in windows.values()):
            return None, None
        scorer, source = self._bodypart_model()
        progress = None
        if report is not None:
            def progress(done: int, total: int) -> None:
                report("check", done / max(total, 1), f"Scoring body position: slice {done}/{total}")
        details = scorer.score_details(image, device=self.device, progress=progress)
        scoring = scoring_record(details, source)
        if not details.reliable:
            why = details.problem or f"slope ratio {details.slope_ratio:.2f}"
            warnings.append(f"Body-part scores look unreliable for this scan ({details.scorer}: {why}); "
                            "every decoder ran on every tile.")
            return None, scoring
        return Gate.from_scores(details, windows), scoring

    @property
    def official_compat_enabled(self) -> bool:
        """Whether a run without an override follows the official pipeline (Segmenter's switch, else the model's)."""
        return self._compat(None, [])[0].enabled

    def _compat(self, override: bool | str | None, warnings: list[str]) -> tuple[OfficialCompat, str]:
        """The official-compatibility options for a run, and where they came from."""
        switch, source = _compat_switch(override), "argument"
        if switch is None:
            switch, source = self.official_compat, "segmenter"
        if switch is None:
            return self.manifest.compat, "model"
        if switch and self.manifest.variant != "clnet-official-v1":
            warnings.append(f"Model {self.manifest.name} is not an imported official CL-Net model; "
                            "its inference follows the official pipeline anyway, as asked.")
        return (OfficialCompat.official() if switch else OfficialCompat()), source

    def _locate(self, source: _Source, groups: list[tuple[Preprocessing, list[str]]], lookups: dict,
                overlap: float | None, report: Reporter, timings: dict[str, float], warnings: list[str],
                gate: Gate | None, compat: OfficialCompat) -> tuple[list[np.ndarray | None], dict]:
        """The coarse pass: per preprocessing group, the world corners of the box around the
        requested anatomies found at the fast spacing (None: not found, or no fast spacing)."""
        t = time.perf_counter()

        def coarse(stage: str, fraction: float = 0.0, text: str | None = None) -> None:
            report("locate", fraction if stage == "network" else float(stage == "merge"),
                   f"Locating the anatomies: {text or stage}")

        boxes: list[np.ndarray | None] = []
        tiles_run: dict[str, int] = {}
        for index, (prep, decs) in enumerate(groups):
            if not prep.fast_spacing_zyx:
                boxes.append(None)
                continue
            labels, _, _, _ = self._run_group(source, prep, decs, lookups, True, overlap, coarse, {},
                                              (index, len(groups)), {}, warnings, tiles_run, gate=gate,
                                              release=False, compat=compat)
            boxes.append(labelled_corners(labels))
        timings["locate"] = time.perf_counter() - t
        return boxes, {"used": True, "margin_mm": LOCATE_MARGIN_MM, "tiles_run": tiles_run,
                       "found": [b is not None for b in boxes]}

    def _preprocessing_groups(self, decoders: Sequence[str],
                              compat: OfficialCompat | None = None) -> list[tuple[Preprocessing, list[str]]]:
        """Decoders sharing one preprocessing run together (encoder once per tile for all of them)."""
        groups: dict[str, tuple[Preprocessing, list[str]]] = {}
        for d in decoders:
            prep = self.manifest.decoder_preprocessing(d)
            settings = prep.to_dict()
            if compat is None or compat.body_crop != "official":
                settings.pop("crop_patch_zyx", None)  # only the official body crop reads it
            key = json.dumps(settings, sort_keys=True)
            groups.setdefault(key, (prep, []))[1].append(d)
        return list(groups.values())

    def _run_group(self, source: _Source, prep: Preprocessing, decoders: list[str], lookups: dict,
                   fast: bool, overlap: float | None, report: Reporter, timings: dict[str, float],
                   group: tuple[int, int], heads: dict[str, sitk.Image], warnings: list[str],
                   tiles_run: dict[str, int], keep_heads: bool = False,
                   gate: Gate | None = None, slabs: list | None = None, box: np.ndarray | None = None,
                   regions: list | None = None, release: bool = True,
                   compat: OfficialCompat | None = None) -> tuple[sitk.Image, sitk.Image | None, int, int]:
        """Prepare and run one preprocessing group; returns its labels and (when there are several
        groups to merge) confidences on the input grid, the overruled-voxel count and the number of
        tiles. ``tiles_run`` counts the tiles the encoder and each decoder actually ran on; the slab
        of slices the network ran on is appended to ``slabs``, the region it tiled to ``regions``.
        ``box``: world corners from the coarse pass; only that box (plus a margin) is tiled.
        ``release``: the input may be let go once prepared (not in the coarse pass). ``compat``: the
        official-compatibility options (default: none)."""
        compat = compat or OfficialCompat()
        t = time.perf_counter()
        report("prepare", 0.0, "Resampling and normalising")
        geometry = Geometry.of(source.image)
        keep_slices = None
        if compat.body_crop == "official" and gate is not None:  # the official crop clears ungated slices
            keep_slices = gated_slices(oriented(source.image, prep.orientation).geometry, gate.z_mm, gate.scores,
                                       gate.windows, decoders)
        # On a GPU the resampling runs there too and the volume stays on it for the network.
        prepared = prepare(source.image, prep, fast=fast, device=self.device if self.device.type == "cuda" else None,
                           compat=compat, keep_slices=keep_slices)
        if release:
            source.prepared(group[0])
        timings["prepare"] = timings.get("prepare", 0.0) + time.perf_counter() - t

        overlap = prep.overlap if overlap is None else float(overlap)
        depth = int(prepared.data.shape[0])
        # Only the slab of slices some decoder applies to is tiled (a subset of anatomies usually
        # needs far fewer slices than the whole scan); outside it the labels stay 0.
        slab = gate.slab(prepared.grid, decoders, prep.patch_size_zyx[0]) if gate else (0, depth)
        if slab and compat.body_crop == "official":
            slab = (0, depth)  # the official crop already holds the gated slices and its margin: all of it runs
        if slabs is not None:
            slabs.append([*slab, depth] if slab else None)
        region = [(0, 0)] * 3
        if slab:
            region = [slab, (0, prepared.data.shape[1]), (0, prepared.data.shape[2])]
            if box is not None:
                region = tiling_region(box, prepared.grid, slab, prep.patch_size_zyx)
        if regions is not None:
            regions.append([list(r) for r in region] if slab else None)
        (z0, z1), (y0, y1), (x0, x1) = region
        volume = prepared.data[z0:z1, y0:y1, x0:x1]
        tiles = count_tiles(volume.shape, prep.patch_size_zyx, overlap, compat.tile_steps) if slab else 0
        t = time.perf_counter()
        report("network", 0.0, f"Running {len(decoders)} decoder(s) on {tiles} tile(s)")

        def attempt(device: torch.device, batch_size: int) -> tuple[LabelMerger, dict[str, int]]:
            # A fresh merger per attempt: a retry after running out of memory starts clean.
            self.model.network.to(device)
            self.device = device
            # User anatomies carry labels from 1000 up: such a label map needs uint16.
            wide = any(int(lookups[d].max(initial=0)) > 255 for d in decoders)
            merger = LabelMerger(prepared.data.shape, {d: lookups[d] for d in decoders}, decoders,
                                 dtype=np.uint16 if wide else np.uint8, keep_heads=keep_heads)
            if not slab:
                return merger, dict.fromkeys(["encoder", *decoders], 0)
            runs = sliding_window(
                self.model.network, volume, decoders, prep.patch_size_zyx, overlap,
                lambda block: merger.add(block.shifted((z0, y0, x0))), device,
                batch_size=batch_size, sigma_scale=prep.gaussian_sigma_scale, pad_value=prep.padding_value(),
                precision=select_precision(self.precision, device),
                active_decoders=gate.for_grid(prepared.grid, decoders, offset=z0) if gate else None,
                skip_below=prep.normalized(prep.body_threshold_hu) if compat.air_tiles == "skip" else None,
                tile_padding=compat.tile_padding, gaussian=compat.gaussian, tile_steps=compat.tile_steps,
                on_tile=lambda done, total: report(
                    "network", (group[0] + done / total) / group[1], f"Network: tile {done}/{total}"
                ),
            )
            return merger, runs

        merger, runs = oom_fallback(attempt, self.device, self.batch_size, log=warnings.append)
        timings["network"] = timings.get("network", 0.0) + time.perf_counter() - t
        for key, n in runs.items():
            tiles_run[key] = tiles_run.get(key, 0) + n

        t = time.perf_counter()
        report("merge", 0.0, "Mapping labels back to the input grid")
        labels = labels_to_input_grid(merger.labels, prepared.grid, geometry)
        confidence = labels_to_input_grid(merger.confidence, prepared.grid, geometry) if group[1] > 1 else None
        for d, head in merger.heads.items():
            heads[d] = labels_to_input_grid(head, prepared.grid, geometry)
        timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - t
        return labels, confidence, merger.conflicts, tiles


class _Source:
    """The input image, given up after the group numbered ``release_after`` has been prepared
    (None: kept, because the caller owns it)."""

    def __init__(self, image: sitk.Image, release_after: int | None) -> None:
        self.image: sitk.Image | None = image
        self.release_after = release_after

    def prepared(self, group: int) -> None:
        if self.release_after is not None and group >= self.release_after:
            self.image = None


def _compat_switch(value: bool | str | None) -> bool | None:
    """``official_compat`` as given (True/False/None, or "on"/"off" from the command line) → bool or None."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "official"):
        return True
    if text in ("off", "false", "clnet"):
        return False
    raise ClnetError(f"Unknown official-compatibility setting {value!r}.", "Use on or off.")
