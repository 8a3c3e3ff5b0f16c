"""The official CL-Net release's body-part network (bpreg) as a clnet slice scorer.

``BpregModel`` = :class:`BpregNetwork` + :class:`BpregSettings` (preprocessing, score processing and the
landmark look-up table of the release). Its ``score_details(image)`` gives, like clnet's own
:class:`~clnet.bodypart.BodyPartModel`, one score per LPS axial slice on the bpreg scale (0 = start of
the pelvis, 100 = end of the eyes), so the Segmenter gates with either one the same way.

Weights are a safetensors file (tensor names of :class:`BpregNetwork`); the settings are JSON in the
model manifest (``bodypart.settings``). Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ..errors import ModelError
from .bpreg_network import KIND, BpregNetwork
from .bpreg_scores import ProcessedScores, ScoreProcessing, process_scores
from .bpreg_slices import BpregPreprocessing, BpregSlices, bpreg_slices
from .model import SliceScores

SETTINGS_VERSION = 1
CPU_BATCH = 32  # slices per forward pass on the CPU (results do not depend on it)
GPU_BATCH = 200  # bpreg's own batch


@dataclass
class BpregSettings:
    """Everything besides the weights that official inference uses to turn a CT into slice scores."""

    scores: ScoreProcessing
    preprocessing: BpregPreprocessing = field(default_factory=BpregPreprocessing)
    start_landmark: str = "pelvis_start"
    end_landmark: str = "eyes_end"
    lookup_table: dict[str, Any] = field(default_factory=dict)  # landmark → expected score (mean, std)
    fill_gaps: bool = True  # CL-Net's NaN gap filling after bpreg's cleaning

    def to_dict(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, "kind": KIND, "preprocessing": self.preprocessing.to_dict(),
                "score_processing": self.scores.to_dict(), "start_landmark": self.start_landmark,
                "end_landmark": self.end_landmark, "lookup_table": self.lookup_table, "fill_gaps": self.fill_gaps}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BpregSettings:
        try:
            if int(d.get("version", 0)) > SETTINGS_VERSION:
                raise ModelError(f"The body-part settings use version {d.get('version')}, newer than this clnet.",
                                 "Upgrade clnet-segmentation.")
            return cls(scores=ScoreProcessing.from_dict(d["score_processing"]),
                       preprocessing=BpregPreprocessing.from_dict(d["preprocessing"]),
                       start_landmark=str(d.get("start_landmark", "pelvis_start")),
                       end_landmark=str(d.get("end_landmark", "eyes_end")),
                       lookup_table=dict(d.get("lookup_table") or {}), fill_gaps=bool(d.get("fill_gaps", True)))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"The body-part network's settings in manifest.json are incomplete ({exc!r}).",
                             "Re-import the official release with `clnet import-official`.") from None

    @classmethod
    def from_release(cls, inference_settings: Mapping[str, Any], source: str = "inference-settings.json") -> BpregSettings:
        """The settings bpreg's inference reads from a release's ``inference-settings.json``."""
        try:
            named = inference_settings.get("settings") or {}
            start = str(named.get("start-landmark", "pelvis_start"))
            end = str(named.get("end-landmark", "eyes_end"))
            table = inference_settings["lookuptable_train_val"]  # the table bpreg's inference uses
            original = table["original"]
            scores = ScoreProcessing(
                transform_min=float(original[start]["mean"]), transform_max=float(original[end]["mean"]),
                slope_mean=float(inference_settings["slope_mean"]),
                tangential_slope_min=float(inference_settings["lower_quantile_tangential_slope"]),
                tangential_slope_max=float(inference_settings["upper_quantile_tangential_slope"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source} lacks a setting bpreg's inference needs ({exc!r}).",
                             "Use the inference-settings.json that came with the release's model.pt.") from None
        if not np.isfinite([scores.transform_min, scores.transform_max, scores.slope_mean]).all() \
                or scores.transform_max == scores.transform_min or scores.slope_mean <= 0:
            raise ModelError(f"{source}: the landmark scores or the mean slope are not usable "
                             f"({scores.transform_min}, {scores.transform_max}, {scores.slope_mean}).",
                             "Use the inference-settings.json that came with the release's model.pt.")
        return cls(scores=scores, start_landmark=start, end_landmark=end,
                   lookup_table=dict(table.get("transformed") or {}))


@dataclass
class BpregModel:
    """bpreg's network with the release's settings: a slice scorer for gating."""

    network: BpregNetwork
    settings: BpregSettings
    kind: str = KIND

    # ----------------------------------------------------------------------------------- files
    def to_bytes(self) -> bytes:
        tensors = {k: v.detach().cpu().to(torch.float32).contiguous().clone()
                   for k, v in self.network.state_dict().items()}
        return save_safetensors_bytes(tensors, metadata={"clnet_part": "bodypart", "kind": KIND})

    @classmethod
    def from_bytes(cls, data: bytes, settings: Mapping[str, Any] | BpregSettings,
                   what: str = "the body-part network") -> BpregModel:
        """Build the scorer from a safetensors file's bytes (names and shapes checked exactly)."""
        if not isinstance(settings, BpregSettings):
            settings = BpregSettings.from_dict(settings)
        try:
            tensors = load_safetensors_bytes(data)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelError(f"The weights of {what} are not a valid safetensors file ({exc}).",
                             "Re-import the official release.") from None
        network = BpregNetwork()
        check_tensors(tensors, network.state_dict(), what)
        network.load_state_dict(tensors, strict=True)
        return cls(network.eval(), settings)

    @classmethod
    def load(cls, path: str | Path, settings: Mapping[str, Any] | BpregSettings, sha256: str | None = None) -> BpregModel:
        from ..checkpoint import sha256_bytes

        data = Path(path).read_bytes()
        if sha256 is not None and sha256_bytes(data).lower() != sha256.lower():
            raise ModelError(f"Body-part network {path} does not match its recorded sha256; it was changed or damaged.",
                             "Re-import the official release.")
        return cls.from_bytes(data, settings, str(path))

    # --------------------------------------------------------------------------------- scoring
    def prepare(self, image: sitk.Image) -> BpregSlices:
        return bpreg_slices(image, self.settings.preprocessing)

    @torch.no_grad()
    def raw_scores(self, slices: np.ndarray, device: torch.device | str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The network's raw output for prepared slices (Z, S, S), one float per slice."""
        device = torch.device(device or "cpu")
        self.network.eval().to(device)
        batch = GPU_BATCH if device.type == "cuda" else CPU_BATCH
        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
        out = []
        for start in range(0, len(x), batch):
            out.append(self.network(x[start:start + batch].to(device)).double().cpu())
            if progress is not None:
                progress(min(start + batch, len(x)), len(x))
        return torch.cat(out).numpy() if out else np.zeros(0)

    def process(self, raw: np.ndarray, z_spacing: float) -> ProcessedScores:
        return process_scores(raw, z_spacing, self.settings.scores)

    def score_details(self, image: sitk.Image, device: torch.device | str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> SliceScores:
        """Scores of the LPS slices, as official CL-Net computes them (bpreg, then its gap filling)."""
        prepared = self.prepare(image)
        n = prepared.z_mm.size
        if prepared.problem is not None:
            nan = np.full(n, np.nan)
            return SliceScores(prepared.z_mm, nan, nan.copy(), float("nan"), 0, self.settings.scores.slope_mean,
                               problem=prepared.problem, scorer=KIND)
        p = self.process(self.raw_scores(prepared.slices, device, progress), prepared.z_spacing)
        scores = p.filled if self.settings.fill_gaps else p.cleaned
        problem = None if np.isfinite(scores).all() else "bpreg dropped every slice as background or outlier"
        details = {"observed_slope": _json_float(p.slope), "valid_z_spacing": p.valid_z_spacing,
                   "reverse_z_ordering": p.reverse_z_ordering, "z_spacing_mm": prepared.z_spacing,
                   "dropped_slices": p.dropped}
        return SliceScores(prepared.z_mm, p.unprocessed, scores, p.slope, p.dropped, self.settings.scores.slope_mean,
                           problem=problem, scorer=KIND, details=details)

    def score_slices(self, image: sitk.Image) -> np.ndarray:
        """One score per axial slice of ``sitk.DICOMOrient(image, "LPS")``."""
        return self.score_details(image).cleaned


def check_tensors(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Names and shapes must match exactly; the error lists every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in set(found) & set(expected) if tuple(found[k].shape) != tuple(expected[k].shape))
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if unexpected:
        parts.append(f"unexpected {unexpected}")
    if wrong:
        parts.append(f"wrong shape {wrong}")
    if parts:
        raise ModelError(f"The tensors of {what} do not match bpreg's VGG16 body-part network: {'; '.join(parts)}.",
                         "It is not the bpreg model clnet supports (VGG16 features, conv6, fc7); please report it.")
    bad = [k for k, v in found.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"The tensors of {what} hold non-finite numbers: {bad}.", "Re-download the release.")


def _json_float(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
