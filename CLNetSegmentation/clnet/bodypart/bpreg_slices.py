"""bpreg's inference preprocessing: every axial slice to 128 × 128 pixels of 3.5 mm, HU window to [-1, 1].

What the official CL-Net pipeline runs on a case, re-implemented for clnet (written from the published
behaviour, checked against bpreg's own code by ``benchmarks/bpr_parity.py``):

1. The image in LPS orientation (the official pipeline requires LPS inputs), slices in index order
   (inferior to superior); in-plane the arrays are indexed (x, y) as bpreg indexes them.
2. HU clipped to the window and mapped linearly onto [-1, 1].
3. A Gaussian blur in-plane before resampling, sigma = 0.8 × 0.25 / (downscaling factor) pixels per
   axis, cut at 3 sigma, mirrored at the border.
4. Bilinear resampling of each slice to round(n × spacing / 3.5) pixels per axis (OpenCV's
   ``INTER_LINEAR`` rule: pixel centres, edge pixels repeated).
5. Centred padding with -1 up to 128, then a centred crop to 128 × 128.

Slices are independent of each other, so the volume is processed a few slices at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from .model import slice_z_mm

#: Below this 1st-percentile value an image has air in it, i.e. is a CT in HU (the same test as
#: ``clnet.io.validate.validate_ct``): an MR or unscaled data never gets that low.
CT_AIR_PERCENTILE_MAX = -500.0
_CHUNK_SLICES = 32


@dataclass(frozen=True)
class BpregPreprocessing:
    """bpreg's ``Nifti2Npy`` settings as the official inference uses them."""

    pixel_mm: float = 3.5
    size: int = 128
    hu_window: tuple[float, float] = (-1000.0, 1500.0)
    value_range: tuple[float, float] = (-1.0, 1.0)
    blur_sigma: tuple[float, float] = (0.8, 0.8)  # pixels, at the reference downscaling factor
    reference_downscaling: float = 0.25
    blur_truncate: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_mm": self.pixel_mm, "size": self.size, "hu_window": list(self.hu_window),
                "value_range": list(self.value_range), "blur_sigma": list(self.blur_sigma),
                "reference_downscaling": self.reference_downscaling, "blur_truncate": self.blur_truncate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpregPreprocessing:
        return cls(pixel_mm=float(d["pixel_mm"]), size=int(d["size"]),
                   hu_window=(float(d["hu_window"][0]), float(d["hu_window"][1])),
                   value_range=(float(d["value_range"][0]), float(d["value_range"][1])),
                   blur_sigma=(float(d["blur_sigma"][0]), float(d["blur_sigma"][1])),
                   reference_downscaling=float(d["reference_downscaling"]), blur_truncate=float(d["blur_truncate"]))


@dataclass
class BpregSlices:
    """The network input of one image, or why the official network cannot score it."""

    slices: np.ndarray  # (Z, size, size) float32, LPS slice order; empty when ``problem`` is set
    z_mm: np.ndarray  # world z of each LPS slice centre
    z_spacing: float  # mm between slices (bpreg's "z-spacing")
    problem: str | None = None


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's bilinear resize along one axis (n_in → n_out samples).

    Output sample d reads position (d + 0.5) · n_in / n_out - 0.5 between its two neighbours; positions
    outside the image take the edge pixel. For float64 images OpenCV (4.x) computes positions and weights
    in double precision, and so does this.
    """
    scale = 1.0 / (n_out / n_in)
    pos = (np.arange(n_out) + 0.5) * scale - 0.5
    lo = np.floor(pos).astype(np.int64)
    w_hi = pos - lo
    w_hi[(lo < 0) | (lo >= n_in - 1)] = 0.0
    lo = np.clip(lo, 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, 1.0 - w_hi, w_hi


def _resample_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    lo, hi, w_lo, w_hi = linear_taps(a.shape[axis], n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    return np.take(a, lo, axis=axis) * w_lo.reshape(shape) + np.take(a, hi, axis=axis) * w_hi.reshape(shape)


def _pad_or_crop(a: np.ndarray, axis: int, size: int, pad_value: float) -> np.ndarray:
    """bpreg's centring: pad both sides ((size-n)//2 before) when short, then crop ((n-size)//2 before)."""
    n = a.shape[axis]
    if n < size:
        widths = [(0, 0)] * a.ndim
        widths[axis] = ((size - n) // 2, (size - n + 1) // 2)
        return np.pad(a, widths, mode="constant", constant_values=pad_value)
    start = (n - size) // 2
    return np.take(a, np.arange(start, start + size), axis=axis)


def target_pixels(n: int, spacing: float, pixel_mm: float) -> int:
    """bpreg's in-plane size after resampling: n / (target / spacing), rounded half up."""
    return int(n / (pixel_mm / spacing) + 0.5)


def _problem_before_scoring(image: sitk.Image) -> str | None:
    """Why the official network cannot score ``image`` at all (None: it can)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    # The voxel axis closest to the body axis must be the slice axis: the network was trained on axial
    # slices, and the official pipeline scores a scan's own slices.
    if int(np.argmax(np.abs(direction[2]))) != 2:
        return "its slices are not axial (a coronal or sagittal acquisition)"
    if image.GetSize()[2] < 2:
        return "it has a single slice"
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, int(np.ceil((array.size / 2_000_000) ** (1 / 3))))
    if float(np.percentile(array[::step, ::step, ::step], 1)) > CT_AIR_PERCENTILE_MAX:
        return "it does not look like a CT in HU (no air below -500 HU; an MR?)"
    return None


def bpreg_slices(image: sitk.Image, prep: BpregPreprocessing | None = None) -> BpregSlices:
    """The official network's input for ``image`` (LPS slice order), or the reason it cannot be scored."""
    prep = prep or BpregPreprocessing()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("Body-part scoring needs a 3D scalar image.",
                         f"Got a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} components.")
    problem = _problem_before_scoring(image)
    lps = sitk.DICOMOrient(image, "LPS")
    z_mm = slice_z_mm(lps)
    sx, sy, sz = (float(s) for s in lps.GetSpacing())
    nx, ny, nz = lps.GetSize()
    out_x, out_y = target_pixels(nx, sx, prep.pixel_mm), target_pixels(ny, sy, prep.pixel_mm)
    if problem is None and (out_x <= 1 or out_y <= 1):
        problem = f"its slices are only {out_x} x {out_y} pixels at {prep.pixel_mm} mm"
    if problem is not None:
        return BpregSlices(np.zeros((0, prep.size, prep.size), np.float32), z_mm, sz, problem)
    sigma = (prep.blur_sigma[0] * prep.reference_downscaling / (out_x / nx),
             prep.blur_sigma[1] * prep.reference_downscaling / (out_y / ny))
    lo, hi = prep.hu_window
    vmin, vmax = prep.value_range
    array = sitk.GetArrayViewFromImage(lps)  # (z, y, x)
    out = np.empty((nz, prep.size, prep.size), dtype=np.float32)
    for z0 in range(0, nz, _CHUNK_SLICES):
        block = np.asarray(array[z0:z0 + _CHUNK_SLICES]).transpose(0, 2, 1)  # (z, x, y): bpreg's in-plane order
        x = (np.clip(block, lo, hi).astype(np.float64) - lo) * (vmax - vmin) / (hi - lo) + vmin
        x = gaussian_filter(x, sigma=(0.0, *sigma), truncate=prep.blur_truncate)
        x = _resample_axis(_resample_axis(x, 2, out_y), 1, out_x)
        x = _pad_or_crop(_pad_or_crop(x, 1, prep.size, vmin), 2, prep.size, vmin)
        out[z0:z0 + x.shape[0]] = x
    return BpregSlices(out, z_mm, sz)
