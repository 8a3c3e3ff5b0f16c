"""Preparation without whole-volume copies: the oriented geometry and array view computed from the
header equal what sitk.DICOMOrient produces, and the copy-free CPU path gives the same model-grid
volume as orienting, cropping and resampling the old way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.inference.preprocessing import (
    Geometry,
    body_bounding_box,
    normalize_ct,
    oriented,
    prepare,
    resample_to_spacing,
    spacing_grid,
)
from clnet.manifest import Normalization, Preprocessing


def stored_differently(img: sitk.Image, order: tuple[int, int, int], flips: tuple[bool, bool, bool],
                       tilt_deg: float = 0.0) -> sitk.Image:
    """``img`` with its axes permuted (``order``: new axis k = old axis order[k]) and some reversed;
    optionally the whole direction rotated a little about z (oblique)."""
    arr = sitk.GetArrayFromImage(img)
    arr = arr.transpose([2 - order[2 - a] for a in range(3)])
    arr = np.flip(arr, tuple(2 - k for k in range(3) if flips[k])).copy()
    out = sitk.GetImageFromArray(arr)
    old = np.array(img.GetDirection()).reshape(3, 3)
    sp = img.GetSpacing()
    cols = [old[:, j] * (-1 if flips[k] else 1) for k, j in enumerate(order)]
    start = [0, 0, 0]
    for k, j in enumerate(order):
        if flips[k]:
            start[j] = img.GetSize()[j] - 1
    direction = np.stack(cols, axis=1)
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        direction = rot @ direction
    out.SetSpacing([sp[j] for j in order])
    out.SetOrigin(img.TransformIndexToPhysicalPoint(start))
    out.SetDirection(direction.ravel().tolist())
    return out


@pytest.fixture(scope="module")
def small() -> sitk.Image:
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16))
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    return img


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (True, True, True)])
def test_oriented_matches_dicom_orient(small, order, flips):
    for tilt in (0.0, 12.0):
        img = stored_differently(small, order, flips, tilt)
        ref = sitk.DICOMOrient(img, "LPS")
        o = oriented(img, "LPS")
        assert o.geometry.size == ref.GetSize()
        np.testing.assert_allclose(o.geometry.spacing, ref.GetSpacing())
        np.testing.assert_allclose(o.geometry.origin, ref.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(o.geometry.direction, ref.GetDirection(), atol=1e-12)
        view = o.array_view(img)
        assert not view.flags.owndata  # a view of the input's buffer
        np.testing.assert_array_equal(view, sitk.GetArrayViewFromImage(ref))


def test_geometry_region_and_grid_match_a_real_crop(small):
    cropped = sitk.RegionOfInterest(small, [5, 4, 3], [2, 3, 1])
    region = Geometry.of(small).region([2, 3, 1], [5, 4, 3])
    assert region == Geometry.of(cropped)
    a, b = spacing_grid(region, (1.5, 2.0, 3.0)), spacing_grid(cropped, (1.5, 2.0, 3.0))
    assert a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin())


def old_prepare(image: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """The former CPU path: oriented copy → cropped copy → whole-volume resample → array copy."""
    img = sitk.DICOMOrient(image, prep.orientation)
    start, extent = body_bounding_box(img, prep.body_threshold_hu)
    cropped = sitk.RegionOfInterest(img, extent, start)
    res = resample_to_spacing(cropped, prep.spacing_zyx[::-1], sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return normalize_ct(sitk.GetArrayFromImage(res), prep.normalization)


def test_copy_free_preparation_equals_orient_crop_resample(example_ct):
    """Same grid and same values (the crop's outermost half voxel may read its true neighbours
    instead of repeating the border: at most a few HU there, none inside)."""
    ct = sitk.ReadImage(str(example_ct))  # stored RAS: x and y are flipped
    prep = Preprocessing(spacing_zyx=(2.0, 2.5, 1.7), patch_size_zyx=(32, 64, 64),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    new = prepare(ct, prep)
    old = old_prepare(ct, prep)
    assert new.data.shape == old.shape and new.data.dtype == np.float32
    diff = np.abs(new.data - old) * 500.0  # HU
    assert float(np.quantile(diff, 0.999)) < 0.01
    assert float(diff[2:-2, 2:-2, 2:-2].max()) < 0.05


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_official_options_do_not_depend_on_storage_or_device(order):
    """The official body crop and the spline resampling read the same oriented view whatever the input's
    axis order; the device path gives the CPU path's volume (spline: prepared on the CPU, then moved)."""
    import torch
    from clnet.manifest import OfficialCompat

    rng = np.random.default_rng(3)
    arr = np.full((20, 24, 28), -1000, np.int16)
    arr[3:17, 5:20, 4:22] = rng.integers(-100, 300, (14, 15, 18))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.2, 1.0, 2.0))
    prep = Preprocessing(spacing_zyx=(1.5, 1.5, 1.5), patch_size_zyx=(8, 8, 8),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    compat = OfficialCompat.official()
    base = prepare(img, prep, compat=compat)
    other = prepare(stored_differently(img, order, (True, False, True)), prep, compat=compat)
    assert other.crop_size_xyz == base.crop_size_xyz
    np.testing.assert_allclose(other.data, base.data, atol=1e-4)
    on_device = prepare(img, prep, compat=compat, device=torch.device("cpu"))
    assert isinstance(on_device.data, torch.Tensor)
    np.testing.assert_array_equal(on_device.data.numpy(), base.data)
    linear = OfficialCompat(body_crop="official")  # the torch resampling path, with the official box
    assert prepare(img, prep, compat=linear, device=torch.device("cpu")).crop_index_xyz == base.crop_index_xyz
