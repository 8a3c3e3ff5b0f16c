"""Bring a CT onto the network's grid: orient → crop to the body → resample → normalise.

Every step keeps SimpleITK geometry, so the result can be mapped back to the input's exact grid.
Resampling and normalisation run in SimpleITK on the CPU, or in torch on a GPU (the same grid and the
same linear interpolation, so the two agree to float rounding); the volume then stays on the GPU for
the sliding window. With official-compatible options (:class:`clnet.manifest.OfficialCompat`) the
body box is the official pipeline's (:mod:`.official_crop`) and the image may be resampled with the
official third-order spline (:mod:`.spline`, on the CPU; on a GPU the prepared volume is then moved
there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..manifest import Normalization, OfficialCompat, Preprocessing
from .official_crop import official_body_box
from .spline import resample_spline


@dataclass
class PreparedVolume:
    """The normalised CT on the model grid (array z, y, x; a torch tensor when prepared on a GPU)
    and that grid's geometry."""

    data: np.ndarray | torch.Tensor
    grid: sitk.Image  # geometry only: size, spacing, origin, direction of ``data``
    crop_index_xyz: tuple[int, int, int]
    crop_size_xyz: tuple[int, int, int]


def orient(image: sitk.Image, orientation: str = "LPS") -> sitk.Image:
    """Permute/flip axes to the model's orientation (DICOM convention; exact, no interpolation)."""
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    if current == orientation:
        return image  # already there: no copy of a possibly large volume
    return sitk.DICOMOrient(image, orientation)


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels are (size, spacing, origin, direction; x, y, z), without the voxels."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def point(self, index: Sequence[float]) -> np.ndarray:
        """World position of a (continuous) voxel index."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin, dtype=float) + d @ (np.asarray(self.spacing, dtype=float) * np.asarray(index))

    def apply(self, image: sitk.Image) -> sitk.Image:
        """``image`` (of this size) placed on this geometry, in place; returned for chaining."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def region(self, start: Sequence[int], size: Sequence[int]) -> Geometry:
        """The geometry of the box of ``size`` voxels from index ``start`` (a RegionOfInterest's)."""
        return Geometry(tuple(int(v) for v in size), self.spacing, tuple(self.point(start).tolist()), self.direction)


@dataclass(frozen=True)
class Oriented:
    """An image as :func:`orient` would return it, described without copying its voxels:
    oriented axis k is the image's axis ``axes[k]``, reversed where ``flips[k]``."""

    geometry: Geometry
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def array_view(self, image: sitk.Image) -> np.ndarray:
        """The oriented (z, y, x) array as a view of ``image``'s buffer (transposed, reversed; no copy)."""
        arr = sitk.GetArrayViewFromImage(image)  # (z, y, x) = image axes (2, 1, 0)
        view = arr.transpose([2 - self.axes[2 - a] for a in range(3)])
        flip_axes = tuple(2 - k for k in range(3) if self.flips[k])
        return np.flip(view, flip_axes) if flip_axes else view


def oriented(image: sitk.Image, orientation: str = "LPS") -> Oriented:
    """How :func:`orient` permutes and flips ``image`` (DICOM letters: the direction each axis runs to),
    and the geometry of the result, computed from the header alone."""
    letters = ("LR", "PA", "SI")  # world axis i, positive / negative direction
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    size, spacing = image.GetSize(), image.GetSpacing()
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    axes, flips = [], []
    for want in orientation:
        pair = next(p for p in letters if want in p)
        j = next(j for j, c in enumerate(current) if c in pair)
        axes.append(j)
        flips.append(current[j] != want)
    start = [0, 0, 0]
    for k, j in enumerate(axes):
        if flips[k]:
            start[j] = size[j] - 1
    origin = Geometry.of(image).point(start)
    new_dir = np.stack([direction[:, j] * (-1.0 if flips[k] else 1.0) for k, j in enumerate(axes)], axis=1)
    geometry = Geometry(tuple(int(size[j]) for j in axes), tuple(float(spacing[j]) for j in axes),
                        tuple(origin.tolist()), tuple(new_dir.ravel().tolist()))
    return Oriented(geometry, tuple(axes), tuple(flips))  # type: ignore[arg-type]


def body_bounding_box(image: sitk.Image, threshold_hu: float, margin_mm: float = 10.0) -> tuple[list[int], list[int]]:
    """Index box (x, y, z start and size) around the largest connected region above ``threshold_hu``.

    Found on a coarse copy (about 6 mm) because only the box is needed; returns the whole image
    when nothing exceeds the threshold.
    """
    return body_box(sitk.GetArrayViewFromImage(image), image.GetSpacing(), threshold_hu, margin_mm)


def body_box(array_zyx: np.ndarray, spacing_xyz: Sequence[float], threshold_hu: float,
             margin_mm: float = 10.0) -> tuple[list[int], list[int]]:
    """:func:`body_bounding_box` on a (z, y, x) array (a view is enough: only a coarse sample is read)."""
    size = list(array_zyx.shape[::-1])
    spacing = spacing_xyz
    step = [max(1, int(round(6.0 / s))) for s in spacing]
    arr = array_zyx[:: step[2], :: step[1], :: step[0]]
    mask = arr > threshold_hu
    if not mask.any():
        return [0, 0, 0], size
    lab, n = ndimage.label(mask)
    if n > 1:
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        mask = lab == int(counts.argmax())
    zz, yy, xx = (np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3))
    lo_zyx = [zz[0], yy[0], xx[0]]
    hi_zyx = [zz[-1] + 1, yy[-1] + 1, xx[-1] + 1]
    start, extent = [], []
    for ax_xyz in range(3):
        ax_zyx = 2 - ax_xyz
        m = int(np.ceil(margin_mm / spacing[ax_xyz]))
        lo = max(0, lo_zyx[ax_zyx] * step[ax_xyz] - m)
        hi = min(size[ax_xyz], hi_zyx[ax_zyx] * step[ax_xyz] + m)
        start.append(int(lo))
        extent.append(int(hi - lo))
    return start, extent


def spacing_grid(image: sitk.Image | Geometry, spacing_xyz: Sequence[float]) -> sitk.Image:
    """An empty (uint8) image: the grid of ``spacing_xyz`` with the same direction and physical extent
    as ``image`` (edges aligned)."""
    geometry = image if isinstance(image, Geometry) else Geometry.of(image)
    old_spacing = np.array(geometry.spacing)
    new_spacing = np.array(spacing_xyz, dtype=float)
    new_size = np.maximum(1, np.round(np.array(geometry.size) * old_spacing / new_spacing)).astype(int)
    direction = np.array(geometry.direction).reshape(3, 3)
    grid = sitk.Image([int(v) for v in new_size], sitk.sitkUInt8)
    grid.SetSpacing(new_spacing.tolist())
    grid.SetDirection(geometry.direction)
    grid.SetOrigin((np.array(geometry.origin) + direction @ ((new_spacing - old_spacing) / 2.0)).tolist())
    return grid


def resample_to_spacing(image: sitk.Image, spacing_xyz: Sequence[float], interpolator=sitk.sitkLinear,
                        default_value: float = 0.0, pixel_type: int | None = None) -> sitk.Image:
    """Resample onto a grid with the same direction and physical extent (edges aligned)."""
    grid = spacing_grid(image, spacing_xyz)
    return sitk.Resample(
        image, grid.GetSize(), sitk.Transform(), interpolator, grid.GetOrigin(), grid.GetSpacing(),
        grid.GetDirection(), default_value, image.GetPixelID() if pixel_type is None else pixel_type,
    )


def resample_on_device(image: sitk.Image, grid: sitk.Image, device: torch.device) -> torch.Tensor:
    """Linear resampling of ``image`` onto ``grid`` (from :func:`spacing_grid`) with torch on ``device``.

    Same voxel centres as SimpleITK: new voxel i sits at old continuous index (i + ½)·new/old − ½ on
    each axis; beyond the outermost centres the border value is used, as ITK's linear interpolator does.
    Returns float32 (z, y, x) on ``device``.
    """
    with warnings.catch_warnings():  # a read-only view of the image's buffer: only read, never written
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)))
    src = src.to(device, non_blocking=True).float()[None, None]  # grid_sample writes a new tensor
    coords = []
    for axis_xyz in (2, 1, 0):  # grid_sample wants (x, y, z) last, built per array axis (z, y, x)
        n_old, n_new = image.GetSize()[axis_xyz], grid.GetSize()[axis_xyz]
        ratio = grid.GetSpacing()[axis_xyz] / image.GetSpacing()[axis_xyz]
        index = (torch.arange(n_new, device=device, dtype=torch.float64) + 0.5) * ratio - 0.5
        coords.append(((2.0 * index + 1.0) / n_old - 1.0).float())  # normalised, align_corners=False
    zz, yy, xx = torch.meshgrid(*coords, indexing="ij")
    sample = torch.stack([xx, yy, zz], dim=-1)[None]
    del zz, yy, xx
    return F.grid_sample(src, sample, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]


def normalize_ct(data, norm: Normalization):
    """Clip to the model's HU window, then z-score with the model's statistics (in place, float32
    NumPy array or torch tensor)."""
    if isinstance(data, torch.Tensor):
        return data.clamp_(norm.clip_low, norm.clip_high).sub_(float(norm.mean)).div_(float(norm.std))
    np.clip(data, norm.clip_low, norm.clip_high, out=data)
    data -= np.float32(norm.mean)
    data /= np.float32(norm.std)
    return data


def prepare(image: sitk.Image, prep: Preprocessing, fast: bool = False, crop_to_body: bool = True,
            device: torch.device | None = None, compat: OfficialCompat | None = None,
            keep_slices: np.ndarray | None = None) -> PreparedVolume:
    """Orient, crop to the body, resample to the model (or fast) spacing and normalise.

    With a ``device`` the resampling and normalisation run there in torch and ``data`` is a tensor on
    that device (used for GPUs); otherwise SimpleITK on the CPU and a NumPy array. ``compat``: which
    steps follow the official pipeline (``body_crop``, ``image_resampling``); ``keep_slices``: the
    oriented slices the official body crop may keep (body-part gating; None: all).
    """
    # Orient before finding the body box: the box then does not depend on how the input's axes
    # happen to be stored, so flipped or permuted copies of a scan give identical results. On the
    # CPU nothing is copied: the body box is found on a view, and the model grid (defined on the
    # oriented crop) is sampled straight from the input, a few slices at a time.
    compat = compat or OfficialCompat()
    spacing_zyx = prep.fast_spacing_zyx if (fast and prep.fast_spacing_zyx) else prep.spacing_zyx
    if device is not None and compat.image_resampling == "linear":
        image = orient(image, prep.orientation)
        start, extent = _crop_box(sitk.GetArrayViewFromImage(image), image.GetSpacing(), prep, crop_to_body,
                                  compat, keep_slices)
        cropped = sitk.RegionOfInterest(image, extent, start)
        grid = spacing_grid(cropped, spacing_zyx[::-1])
        data = normalize_ct(resample_on_device(cropped, grid, torch.device(device)), prep.normalization)
        return PreparedVolume(data=data, grid=grid, crop_index_xyz=tuple(start), crop_size_xyz=tuple(extent))
    view = oriented(image, prep.orientation)
    start, extent = _crop_box(view.array_view(image), view.geometry.spacing, prep, crop_to_body, compat, keep_slices)
    grid = spacing_grid(view.geometry.region(start, extent), spacing_zyx[::-1])
    if compat.image_resampling == "spline3":
        # No torch equivalent of the official spline: prepared on the CPU, then moved to the device.
        (x0, y0, z0), (nx, ny, nz) = start, extent
        crop = view.array_view(image)[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx]
        data = resample_spline(crop, view.geometry.spacing[::-1], grid.GetSize()[::-1], grid.GetSpacing()[::-1])
    else:
        data = resample_into(image, grid, default_value=-1024.0)
    data = normalize_ct(data, prep.normalization)
    if device is not None:
        data = torch.from_numpy(data).to(device)
    return PreparedVolume(data=data, grid=grid, crop_index_xyz=tuple(start), crop_size_xyz=tuple(extent))


def _crop_box(array_zyx: np.ndarray, spacing_xyz: Sequence[float], prep: Preprocessing, crop_to_body: bool,
              compat: OfficialCompat, keep_slices: np.ndarray | None) -> tuple[list[int], list[int]]:
    """The box (x, y, z start and size) of the oriented image the model grid covers."""
    if not crop_to_body:
        return [0, 0, 0], list(array_zyx.shape[::-1])
    if compat.body_crop == "official":
        return official_body_box(array_zyx, prep.crop_patch_zyx or prep.patch_size_zyx, keep_slices)
    return body_box(array_zyx, spacing_xyz, prep.body_threshold_hu)


def resample_into(image: sitk.Image, grid: sitk.Image, default_value: float = 0.0,
                  slab_bytes: int = 8 << 20) -> np.ndarray:
    """Linear resampling of ``image`` onto ``grid`` as a float32 (z, y, x) array, a slab of slices at a
    time (no second whole-volume buffer)."""
    nx, ny, nz = grid.GetSize()
    out = np.empty((nz, ny, nx), dtype=np.float32)
    rows = max(1, slab_bytes // (4 * nx * ny))
    for z0 in range(0, nz, rows):
        z1 = min(nz, z0 + rows)
        part = sitk.Resample(image, [nx, ny, z1 - z0], sitk.Transform(), sitk.sitkLinear,
                             grid.TransformIndexToPhysicalPoint((0, 0, z0)), grid.GetSpacing(), grid.GetDirection(),
                             default_value, sitk.sitkFloat32)
        out[z0:z1] = sitk.GetArrayViewFromImage(part)
    return out


def labels_to_input_grid(labels_zyx: np.ndarray, grid: sitk.Image, reference: sitk.Image | Geometry) -> sitk.Image:
    """Nearest-neighbour map of model-grid labels onto the input image's own grid (world coordinates).

    Labels stay labels (no blending), and voxels outside the processed region become 0. Only the
    reference's geometry is used: it may be a :class:`Geometry`, whose voxels are gone.
    """
    lab = sitk.GetImageFromArray(labels_zyx)
    lab.CopyInformation(grid)
    ref = reference if isinstance(reference, Geometry) else Geometry.of(reference)
    return sitk.Resample(lab, ref.size, sitk.Transform(), sitk.sitkNearestNeighbor, ref.origin, ref.spacing,
                         ref.direction, 0, lab.GetPixelID())


def labels_to_model_grid(labels: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Nearest-neighbour map of a label image (any orientation) onto a model grid; used by training."""
    out = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(out)
