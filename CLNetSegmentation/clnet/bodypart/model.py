"""Slice-position model: a tiny 2D CNN that gives every axial slice a body-position score.

The score scale follows the one CL-Net inherits from bpreg (0 = start of the pelvis, about 100 = end
of the eyes, about 0.12 units per mm along the body axis). The network is trained self-supervised
(see :mod:`clnet.bodypart.train`) so that score differences are proportional to physical distance;
one offset, fitted on labelled landmarks, places it on that scale. ``docs/bodypart.md`` has the
method and its limits.

Files are safetensors with the architecture, preprocessing and calibration in the header metadata
(JSON); nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from scipy.ndimage import gaussian_filter1d
from torch import nn

from ..checkpoint import sha256_bytes
from ..errors import InputError, ModelError

FORMAT_NAME = "clnet-bodypart"
FORMAT_VERSION = 1
METADATA_KEY = "clnet_bodypart"

#: bpreg's expected slope of the score along the body axis (units per mm): the
#: bpreg public model's inference-settings.json ("slope_mean": 0.1194).
SLOPE_UNITS_PER_MM = 0.1194

#: Scores assigned to landmarks on the bpreg/CL-Net scale. ``pelvis_start`` is bpreg's zero (the most
#: inferior slice of the hip bones). ``femur_end`` (top of the femoral heads) is not a bpreg anchor; its
#: value is our estimate: ~84 mm above the bottom of the ischium times the slope above (docs/bodypart.md).
LANDMARK_SCORES: dict[str, float] = {"pelvis_start": 0.0, "femur_end": 10.0}

HU_WINDOW = (-1000.0, 1500.0)
BODY_HU = -500.0  # voxels above this belong to the patient (or table) when centring the slice crop


@dataclass(frozen=True)
class BodyPartConfig:
    """Architecture and preprocessing; stored in the weight file so that a file is self-describing."""

    size: int = 64  # in-plane pixels of the network input
    pixel_mm: float = 6.0  # in-plane spacing of the network input (64 x 6 mm = 384 mm field of view)
    widths: tuple[int, ...] = (8, 16, 32, 48)
    hu_window: tuple[float, float] = HU_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "pixel_mm": self.pixel_mm, "widths": list(self.widths),
                "hu_window": list(self.hu_window)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BodyPartConfig:
        return cls(size=int(data["size"]), pixel_mm=float(data["pixel_mm"]),
                   widths=tuple(int(w) for w in data["widths"]),
                   hu_window=(float(data["hu_window"][0]), float(data["hu_window"][1])))


class SliceScorer(nn.Module):
    """Strided convolutions, global mean pooling (position in the slice does not matter), one output."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            # GroupNorm, not BatchNorm: the score of a slice must not depend on the rest of the batch.
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1), nn.GroupNorm(4, w), nn.LeakyReLU(0.1)]
            cin = w
        layers += [nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> (N,)
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


@dataclass
class SliceScores:
    """Everything :meth:`BodyPartModel.score_details` measured on one image (LPS slice order)."""

    z_mm: np.ndarray  # world z of each slice centre
    raw: np.ndarray  # calibrated network output, before cleaning
    cleaned: np.ndarray  # smooth, monotone scores (what score_slices returns)
    slope: float  # robust fit of raw scores against z, units per mm
    outliers: int  # slices whose raw score was replaced by the robust line
    expected_slope: float = SLOPE_UNITS_PER_MM  # units per mm the scorer's scale should rise by
    problem: str | None = None  # why the scorer could not score this image at all (then nothing is gated)
    scorer: str = "clnet-bodypart"  # which kind of network scored the slices
    details: dict[str, Any] = field(default_factory=dict)  # scorer-specific diagnostics (JSON-ready)

    @property
    def slope_ratio(self) -> float:
        """Observed / expected slope: far from 1 means the scan (or the model) is not trustworthy."""
        return self.slope / self.expected_slope

    @property
    def reliable(self) -> bool:
        """False when the scores do not rise along the body as expected (0.5 to 2 x the expected slope),
        or when the scorer could not score the image (``problem``).

        Callers should then not gate decoders by position for this image (run them all).
        """
        return bool(self.problem is None and np.isfinite(self.slope_ratio) and 0.5 <= self.slope_ratio <= 2.0)


@dataclass
class BodyPartModel:
    """The slice network plus its calibration (score = scale * network + offset)."""

    config: BodyPartConfig
    network: SliceScorer
    offset: float = 0.0
    scale: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)  # provenance: what it was trained on, how

    @classmethod
    def create(cls, config: BodyPartConfig | None = None, seed: int = 0) -> BodyPartModel:
        """A fresh, untrained model (weights initialised from ``seed``)."""
        config = config or BodyPartConfig()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        network = SliceScorer(config.widths)
        torch.random.set_rng_state(gen_state)
        return cls(config, network.eval())

    # ----------------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": self.config.to_dict(),
                "calibration": {"offset": self.offset, "scale": self.scale,
                                "slope_units_per_mm": SLOPE_UNITS_PER_MM, "landmark_scores": LANDMARK_SCORES},
                "info": self.info}

    def to_bytes(self) -> bytes:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.network.state_dict().items()}
        meta = json.dumps(self.metadata(), sort_keys=True)
        return save_safetensors_bytes(tensors, metadata={METADATA_KEY: meta})

    def save(self, path: Path) -> str:
        """Write the model to ``path`` (atomically); returns the file's sha256."""
        from ..io.atomic import atomic_write

        data = self.to_bytes()
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
        return sha256_bytes(data)

    @classmethod
    def load(cls, path: Path, sha256: str | None = None) -> BodyPartModel:
        """Read a model file; ``sha256`` (when given) must match the file or :class:`ModelError` is raised."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"Cannot read body-part model {path} ({exc.strerror or exc}).",
                             "Check the path or re-create it with `clnet bodypart train`.") from None
        if sha256 is not None and sha256_bytes(data).lower() != sha256.lower():
            raise ModelError(f"Body-part model {path} does not match its recorded sha256; it was changed or damaged.",
                             "Re-install or re-train it.")
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "body-part model") -> BodyPartModel:
        bad = f"{what} is not a valid clnet body-part model"
        meta = _read_metadata(data, bad)
        try:
            if meta.get("format") != FORMAT_NAME or int(meta.get("version", -1)) != FORMAT_VERSION:
                raise ModelError(f"{bad} (format {meta.get('format')!r} version {meta.get('version')!r}).",
                                 f"Expected {FORMAT_NAME} version {FORMAT_VERSION}.")
            config = BodyPartConfig.from_dict(meta["config"])
            calib = meta["calibration"]
            offset, scale = float(calib["offset"]), float(calib["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{bad} (metadata: {exc}).", "Re-create it with `clnet bodypart train`.") from None
        try:
            tensors = load_safetensors_bytes(data)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelError(f"{bad} ({exc}).", "Re-create it with `clnet bodypart train`.") from None
        network = SliceScorer(config.widths)
        expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != found:
            raise ModelError(f"{bad}: its tensors do not match the architecture in its metadata.",
                             "Re-create it with `clnet bodypart train`.")
        if not all(torch.isfinite(v).all() for v in tensors.values()) or not (np.isfinite(offset) and np.isfinite(scale)):
            raise ModelError(f"{bad}: it holds non-finite numbers.", "Re-create it with `clnet bodypart train`.")
        network.load_state_dict(tensors, strict=True)
        return cls(config, network.eval(), offset=offset, scale=scale, info=dict(meta.get("info") or {}))

    # --------------------------------------------------------------------------------- scoring
    def prepare(self, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        """LPS-orient ``image`` and return (network input (Z, S, S) float32 in [-1, 1], slice z in mm)."""
        return prepare_slices(image, self.config)

    @torch.no_grad()
    def raw_scores(self, slices: np.ndarray, batch: int = 256) -> np.ndarray:
        """Calibrated network output for already prepared slices (no cleaning)."""
        self.network.eval()
        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
        out = [self.network(x[i:i + batch]) for i in range(0, len(x), batch)]
        raw = torch.cat(out).double().numpy() if out else np.zeros(0)
        return raw * self.scale + self.offset

    def score_details(self, image: sitk.Image, device: torch.device | str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> SliceScores:
        """Raw and cleaned scores with the fit diagnostics, slices in LPS order (inferior to superior).

        ``device`` and ``progress`` are accepted for the scorer interface; this small network always
        runs on the CPU in one go."""
        slices, z = self.prepare(image)
        raw = self.raw_scores(slices)
        cleaned, slope, outliers = clean_scores(z, raw)
        return SliceScores(z, raw, cleaned, slope, outliers)

    def score_slices(self, image: sitk.Image) -> np.ndarray:
        """One cleaned score per axial slice of ``sitk.DICOMOrient(image, "LPS")`` (index = LPS z index)."""
        return self.score_details(image).cleaned


def score_world_z(model: BodyPartModel, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(world z in mm of each LPS slice, its score): map onto another grid with ``np.interp`` on z."""
    details = model.score_details(image)
    return details.z_mm, details.cleaned


# ------------------------------------------------------------------------------------- helpers
def _read_metadata(data: bytes, bad: str) -> dict[str, Any]:
    """The JSON stored under METADATA_KEY in the safetensors header (parsed by hand: no tensors needed)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        if n <= 0 or 8 + n > len(data):
            raise ValueError("header length out of range")
        header = json.loads(data[8:8 + n].decode("utf-8"))
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
        return meta
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{bad} ({type(exc).__name__}: {exc}).",
                         "Re-create it with `clnet bodypart train`.") from None


def slice_z_mm(image: sitk.Image) -> np.ndarray:
    """World z (mm) of the centre of every axial slice (works for tilted directions too)."""
    nx, ny, nz = image.GetSize()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    idx = np.stack([np.full(nz, (nx - 1) / 2), np.full(nz, (ny - 1) / 2), np.arange(nz, dtype=float)])
    return np.asarray(image.GetOrigin(), dtype=float)[2] + (direction @ (spacing[:, None] * idx))[2]


def _check_image(image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("Body-part scoring needs a 3D scalar image.",
                         f"Got a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} components.")


def orient_lps(image: sitk.Image) -> sitk.Image:
    """The image in LPS orientation (z index runs inferior to superior)."""
    _check_image(image)
    return sitk.DICOMOrient(image, "LPS")


def prepare_slices(image: sitk.Image, config: BodyPartConfig) -> tuple[np.ndarray, np.ndarray]:
    """Resample every LPS axial slice to ``size`` x ``size`` pixels of ``pixel_mm``, centred on the body."""
    _check_image(image)
    # Average blocks of in-plane pixels first: the coarse resampling below then does not alias fine
    # detail, and re-orienting the (much smaller) result is cheap. The image axis closest to world z
    # is the slice axis and is never shrunk.
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    slice_axis = int(np.argmax(np.abs(direction[2])))
    shrink = [1 if a == slice_axis else max(1, int(config.pixel_mm / image.GetSpacing()[a])) for a in range(3)]
    img = sitk.BinShrink(image, shrink) if max(shrink) > 1 else image
    img = sitk.Cast(sitk.DICOMOrient(img, "LPS"), sitk.sitkFloat32)
    z_mm = slice_z_mm(img)
    spacing = img.GetSpacing()
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x)
    body = arr > BODY_HU
    nx, ny = img.GetSize()[0], img.GetSize()[1]
    if body.any():
        # Centre of the body's bounding box over the whole scan: one crop for all slices, so slices of a
        # scan stay comparable, and the patient's place on the table does not matter.
        ys, xs = np.nonzero(body.any(axis=0))
        cx, cy = (xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0
    else:
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), 0.0)))
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    half = (config.size - 1) / 2.0 * config.pixel_mm
    origin = centre - direction @ np.array([half, half, 0.0])
    out = sitk.Resample(img, [config.size, config.size, img.GetSize()[2]], sitk.Transform(), sitk.sitkLinear,
                        origin.tolist(), [config.pixel_mm, config.pixel_mm, spacing[2]], img.GetDirection(),
                        HU_WINDOW[0] - 24.0, sitk.sitkFloat32)
    lo, hi = config.hu_window
    x = np.clip(sitk.GetArrayFromImage(out), lo, hi)
    x = np.nan_to_num(x, nan=lo)
    return ((x - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32), z_mm


def robust_line(z: np.ndarray, y: np.ndarray, iterations: int = 10) -> tuple[float, float]:
    """(a, b) of y ~ a + b z, fitted with Tukey-bisquare reweighting so outlier slices do not pull it."""
    w = np.ones_like(y)
    a, b = float(np.mean(y)), 0.0
    for _ in range(iterations):
        if w.sum() < 2 or np.ptp(z[w > 0]) == 0:
            break
        b, a = np.polyfit(z, y, 1, w=np.sqrt(w))
        r = y - (a + b * z)
        s = 1.4826 * np.median(np.abs(r - np.median(r)))
        c = 4.685 * max(s, 0.5)  # the floor (units) stops a perfect fit from rejecting everything
        w = np.where(np.abs(r) < c, (1 - (r / c) ** 2) ** 2, 0.0)
    return float(a), float(b)


def isotonic(y: np.ndarray, increasing: bool = True) -> np.ndarray:
    """Least-squares monotone fit (pool adjacent violators)."""
    v = np.asarray(y, dtype=float) if increasing else -np.asarray(y, dtype=float)
    means: list[float] = []
    counts: list[int] = []
    for value in v:
        means.append(float(value))
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = counts[-2] + counts[-1]
            means[-2] = (means[-2] * counts[-2] + means[-1] * counts[-1]) / n
            counts[-2] = n
            means.pop()
            counts.pop()
    out = np.repeat(means, counts)
    return out if increasing else -out


def clean_scores(z: np.ndarray, raw: np.ndarray, sigma_mm: float = 6.0,
                 outlier_units: float = 3.0) -> tuple[np.ndarray, float, int]:
    """Robust line, outlier replacement, smoothing of the residual and a monotone fit.

    Returns (cleaned scores, fitted slope in units/mm, number of outlier slices). Smoothing the
    residual around the line (not the scores) keeps the slope right at the first and last slices.
    """
    raw = np.asarray(raw, dtype=float)
    z = np.asarray(z, dtype=float)
    if raw.size == 0:
        return raw.copy(), float("nan"), 0
    finite = np.isfinite(raw)
    if not finite.any():
        raise InputError("The body-part model gave no finite score for this image.", "Is it a CT?")
    if raw.size < 3 or np.ptp(z) == 0:
        return np.where(finite, raw, np.nanmean(raw[finite])), float("nan"), int((~finite).sum())
    a, b = robust_line(z[finite], raw[finite])
    line = a + b * z
    resid = np.where(finite, raw - line, 0.0)
    mad = 1.4826 * np.median(np.abs(resid[finite] - np.median(resid[finite])))
    bad = ~finite | (np.abs(resid) > max(outlier_units, 3.0 * mad))
    resid[bad] = 0.0
    step = float(np.median(np.abs(np.diff(z)))) or 1.0
    smooth = line + gaussian_filter1d(resid, sigma_mm / step, mode="nearest")
    # Slices are in z order, so the monotone direction is the sign of the fitted slope.
    order = np.argsort(z, kind="stable")
    cleaned = np.empty_like(smooth)
    cleaned[order] = isotonic(smooth[order], increasing=b >= 0)
    return cleaned, b, int(bad.sum())
