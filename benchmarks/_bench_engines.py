"""The two engines ``bench_inference.py`` times: the CL-Net Segmenter and the nnU-Net v2 ensemble
doing the same job, plus the scenario and measurement records."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
from _bench_setup import nnunet_specs

# --------------------------------------------------------------------------------------------------
# the two engines


class ResampleBackTimer:
    """Wraps the Segmenter's label → input-grid resampling so its time can be split out of ``merge``."""

    def __init__(self) -> None:
        import clnet.inference.segmenter as segmenter_module

        self.seconds = 0.0
        self.paused = False  # set during the coarse (locate) pass, whose time is its own stage
        original = segmenter_module.labels_to_input_grid

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if not self.paused:
                    self.seconds += time.perf_counter() - t

        segmenter_module.labels_to_input_grid = timed


@dataclass
class Scenario:
    key: str  # full / anatomy / region
    label: str
    anatomies: list[str] | None = None
    regions: list[str] | None = None


@dataclass
class Measure:
    """All timed repeats of one (engine, scenario, mode)."""

    engine: str
    scenario: str
    mode: str
    decoders: list[str] = field(default_factory=list)
    tiles: int = 0
    runs: dict[str, int] = field(default_factory=dict)  # CL-Net: tiles the encoder / each decoder ran on
    coarse_tiles: int = 0  # CL-Net: tiles of the coarse (locate) pass before a subset
    total_s: list[float] = field(default_factory=list)
    stages_s: list[dict[str, float]] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.total_s)

    def stage_median(self, stage: str) -> float:
        return statistics.median(s.get(stage, 0.0) for s in self.stages_s)

    def to_dict(self) -> dict:
        stages = sorted({k for s in self.stages_s for k in s})
        return {
            "engine": self.engine, "scenario": self.scenario, "mode": self.mode, "decoders": self.decoders,
            "tiles": self.tiles, "tiles_run": self.runs, "coarse_tiles": self.coarse_tiles, "repeats": len(self.total_s), "total_s": [round(v, 4) for v in self.total_s],
            "median_total_s": round(self.median(), 4),
            "median_stages_s": {k: round(self.stage_median(k), 4) for k in stages},
        }


class ClnetEngine:
    """The Segmenter; ``locate`` is passed to every subset run (None: the Segmenter's default)."""

    def __init__(self, model_dir: Path, device: str, gating: bool = True, precision: str = "auto",
                 locate: bool | None = None) -> None:
        from clnet import Segmenter

        t = time.perf_counter()
        self.locate = locate
        self.segmenter = Segmenter(model_dir, device=device, gating=gating, precision=precision)
        self.load_seconds = time.perf_counter() - t
        self.timer = ResampleBackTimer()

    def run(self, path: Path, scenario: Scenario, fast: bool, overlap: float | None, write_to: Path | None = None,
            progress=None):
        from clnet.outputs import save_result

        self.timer.seconds = 0.0

        def watch(text: str, fraction: float) -> None:
            self.timer.paused = text.startswith("Locating")
            if progress is not None:
                progress(text, fraction)

        t = time.perf_counter()
        result = self.segmenter.segment(str(path), anatomies=scenario.anatomies, regions=scenario.regions, fast=fast,
                                        overlap=overlap, progress=watch, locate=self.locate)
        self.timer.paused = False
        total = time.perf_counter() - t
        stages = dict(result.timings)
        stages["resample_back"] = self.timer.seconds
        stages["merge"] = stages.get("merge", 0.0) - self.timer.seconds
        if write_to is not None:
            source = sitk.ReadImage(str(path))  # untimed: save_result needs the input for its geometry only
            t = time.perf_counter()
            save_result(result, write_to, source, formats=("nifti",))
            stages["write"] = time.perf_counter() - t
        return total, stages, result


class NnunetEngine:
    def __init__(self, manifest, root: Path, overlap: float, device, modes: Sequence[str]) -> None:
        from _nnunet_baseline import NnUNetEnsemble

        self.manifest = manifest
        self.ensembles = {m: NnUNetEnsemble(nnunet_specs(manifest, m == "fast"), root / m, overlap, device)
                          for m in modes}
        self.load_seconds = sum(e.load_seconds for e in self.ensembles.values())

    def run(self, path: Path, decoders: Sequence[str], requested: Sequence[str], mode: str):
        from clnet.catalog import load_catalog
        from clnet.inference.merge import decoder_lookup
        from clnet.io import read_image

        t = time.perf_counter()
        image = read_image(path).image
        read = time.perf_counter() - t
        catalog = load_catalog()
        labels_by_name = {a.name: a.label for a in catalog}
        wanted = set(requested)
        lookups = {
            d: decoder_lookup([catalog.by_name(n).name for n in self.manifest.decoders[d].anatomies], labels_by_name,
                              wanted)
            for d in decoders
        }
        prep = self.manifest.decoder_preprocessing(decoders[0]) if decoders else self.manifest.preprocessing
        _, stages, tiles = self.ensembles[mode].run(image, lookups, prep, fast=mode == "fast")
        total = time.perf_counter() - t
        return total, {"read": read, **stages}, tiles
