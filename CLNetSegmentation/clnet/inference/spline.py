"""Third-order spline resampling of the image onto the model grid, as the official CL-Net pipeline does it.

The official preprocessing (nnU-Net v1 ``resample_patient``) resizes the cropped image with
``skimage.transform.resize(order=3, mode="edge")``, which is scipy's cubic B-spline with the
``nearest`` boundary. When one axis's spacing is more than 3× another's (in the input, else in the
target) and that axis is the only coarsest one, it resizes each plane across that axis with order 3
and picks along it with order 0 ("separate z").

Here the same spline is evaluated on clnet's own model grid (the one linear resampling uses, so only
the values change, not the grid). A spline on a grid is separable: resampling is one matrix per axis
(:func:`axis_weights`, built by running scipy's own 1-D spline on unit vectors, so boundary handling
and rounding of order 0 are scipy's), applied along z, then y, then x. The work goes a slab of output
slices at a time and reads only the input slices that slab needs: a cubic spline's prefilter reaches
every slice in principle, but its weights fall by 0.27 per slice, so slices whose weight is below
:data:`WEIGHT_FLOOR` are left out (an error below 1e-5 HU). Memory: one slab of input slices
(float32) and its partial results, never a second whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Spacing ratio above which the official pipeline resamples the coarse axis with order 0.
ANISOTROPY_THRESHOLD = 3.0
#: Prefilter weights below this are left out of a slab (their slices are not read).
WEIGHT_FLOOR = 1e-9
#: Input slices read per slab, about (float32), besides the slices the prefilter reaches into.
SLAB_BYTES = 32 << 20


def separate_axis(spacing_in_zyx: Sequence[float], spacing_out_zyx: Sequence[float]) -> int | None:
    """The axis the official pipeline resamples with order 0 (None: order 3 on every axis).

    nnU-Net v1 ``get_do_separate_z`` / ``get_lowres_axis``: the input's spacing decides if it is
    anisotropic (max / min > 3), else the target's; the axis is the one with the largest spacing,
    and only if no other axis has exactly that spacing."""
    for spacing in (spacing_in_zyx, spacing_out_zyx):
        sp = np.asarray(spacing, dtype=float)
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            axes = np.flatnonzero(sp.max() / sp == 1)
            return int(axes[0]) if axes.size == 1 else None
    return None


def axis_weights(n_in: int, positions: np.ndarray, order: int) -> np.ndarray:
    """(len(positions), n_in) matrix of a 1-D spline interpolation of ``order`` (scipy, ``nearest``
    boundary) at continuous indices ``positions``: column c is the interpolation of the unit vector e_c."""
    weights = np.empty((positions.size, n_in), dtype=np.float64)
    unit = np.zeros(n_in, dtype=np.float64)
    coords = np.asarray(positions, dtype=np.float64)[None]
    for c in range(n_in):
        unit[c] = 1.0
        weights[:, c] = ndimage.map_coordinates(unit, coords, order=order, mode="nearest")
        unit[c] = 0.0
    # The prefilter's far tails (below 1e-12) would become float32 denormals, which are very slow to
    # multiply; without them the result changes by less than 1e-8 HU.
    weights[np.abs(weights) < WEIGHT_FLOOR * 1e-3] = 0.0
    return weights


def grid_positions(n_out: int, spacing_in: float, spacing_out: float) -> np.ndarray:
    """Continuous input indices of the model grid's voxels along one axis: voxel i of the grid with the
    same physical extent (edges aligned, :func:`.spacing_grid`) sits at (i + ½)·out/in − ½."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (spacing_out / spacing_in) - 0.5


def resample_spline(volume_zyx: np.ndarray, spacing_in_zyx: Sequence[float], shape_out_zyx: Sequence[int],
                    spacing_out_zyx: Sequence[float], slab_bytes: int = SLAB_BYTES) -> np.ndarray:
    """Resample ``volume_zyx`` (an array or a view of one: only read, a slab at a time) onto the grid of
    ``shape_out_zyx`` voxels of ``spacing_out_zyx`` over the same physical extent, with the official
    pipeline's spline orders. Returns float32 (z, y, x)."""
    shape_in = volume_zyx.shape
    flat = separate_axis(spacing_in_zyx, spacing_out_zyx)
    weights = [
        axis_weights(shape_in[a], grid_positions(int(shape_out_zyx[a]), spacing_in_zyx[a], spacing_out_zyx[a]),
                     0 if a == flat else 3).astype(np.float32)
        for a in range(3)
    ]
    wz, wy, wx = weights
    out = np.empty(tuple(int(s) for s in shape_out_zyx), dtype=np.float32)
    plane = shape_in[1] * shape_in[2] * 4
    rows = max(1, int(slab_bytes // plane * shape_out_zyx[0] / max(1, shape_in[0])))
    for z0 in range(0, out.shape[0], rows):
        z1 = min(out.shape[0], z0 + rows)
        reach = np.flatnonzero(np.abs(wz[z0:z1]).max(axis=0) > WEIGHT_FLOOR)
        c0, c1 = int(reach[0]), int(reach[-1]) + 1
        slab = np.asarray(volume_zyx[c0:c1], dtype=np.float32)
        # One large matrix product per axis (tensordot): numpy's stacked matmul is several times slower.
        part = np.tensordot(wz[z0:z1, c0:c1], slab, axes=1)  # (rows, y_in, x_in)
        del slab
        part = np.tensordot(part, wx, axes=([2], [1]))  # (rows, y_in, x_out)
        out[z0:z1] = np.tensordot(wy, part, axes=([1], [1])).transpose(1, 0, 2)  # (rows, y_out, x_out)
    return out
