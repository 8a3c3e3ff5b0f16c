"""Coarse localisation for subsets: the box a fast-mode pass finds, the normal-spacing region it
becomes, and a subset run on the real CT with the trained demo model (fewer tiles, same labels)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.inference import Segmenter
from clnet.inference.locate import fit_range, labelled_corners, tiling_region


def test_fit_range_clips_then_grows_centred_inside() -> None:
    assert fit_range(10, 50, 100, 20) == (10, 50)  # long enough already
    assert fit_range(-5, 130, 100, 20) == (0, 100)  # clipped
    assert fit_range(40, 44, 100, 20) == (32, 52)  # grown around its centre
    assert fit_range(2, 6, 100, 20) == (0, 20)  # grown, kept inside at the start
    assert fit_range(95, 99, 100, 20) == (80, 100)  # ... and at the end
    assert fit_range(10, 20, 15, 64) == (0, 15)  # never beyond the axis


def labelled(size_xyz, spacing, direction, box_zyx) -> sitk.Image:
    arr = np.zeros(size_xyz[::-1], np.uint8)
    arr[tuple(slice(a, b) for a, b in box_zyx)] = 7
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-40.0, 25.0, 100.0))
    img.SetDirection(direction)
    return img


def test_labelled_corners_are_the_voxel_edges_of_the_labels() -> None:
    img = labelled((20, 16, 12), (2.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), [(2, 5), (4, 9), (3, 11)])
    corners = labelled_corners(img)
    assert corners.shape == (8, 3)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    np.testing.assert_allclose(lo, [-40 + 2.5 * 2, 25 + 3.5 * 2, 100 + 1.5 * 3])
    np.testing.assert_allclose(hi, [-40 + 10.5 * 2, 25 + 8.5 * 2, 100 + 4.5 * 3])
    assert labelled_corners(sitk.Image(4, 4, 4, sitk.sitkUInt8)) is None


def test_tiling_region_maps_the_box_onto_a_flipped_grid_with_margin_and_minimum_size() -> None:
    """Labels found on an RAS-stored coarse image; the model grid is LPS at another spacing: the
    region covers the same world box plus the margin, cut to the slab along z, at least a patch long."""
    ras = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    coarse = labelled((40, 40, 30), (6.0, 6.0, 6.0), ras, [(10, 14), (15, 20), (8, 12)])
    grid = sitk.Image(160, 160, 120, sitk.sitkUInt8)
    grid.SetSpacing((1.5, 1.5, 1.5))
    corners = labelled_corners(coarse)
    # Put the grid's origin at the world corner with the smallest x, y, z (LPS direction).
    grid.SetOrigin(tuple(corners.min(axis=0) - np.array([60.0, 45.0, 30.0])))
    region = tiling_region(corners, grid, slab=(0, 120), patch_zyx=(8, 8, 8), margin_mm=15.0)
    box_mm = corners.max(axis=0) - corners.min(axis=0)  # x, y, z
    for (start, stop), ax, before in zip(region, (2, 1, 0), (30.0, 45.0, 60.0)):
        assert start == pytest.approx((before - 15.0) / 1.5, abs=1)
        assert stop == pytest.approx((before + box_mm[ax] + 15.0) / 1.5, abs=1)
    cut = tiling_region(corners, grid, slab=(0, 25), patch_zyx=(8, 8, 8), margin_mm=15.0)
    assert cut[0] == (10, 25) and cut[1:] == region[1:]  # z cut to the slab
    tall = tiling_region(corners, grid, slab=(0, 120), patch_zyx=(100, 8, 8), margin_mm=15.0)
    assert tall[0][1] - tall[0][0] == 100


@pytest.fixture(scope="module")
def demo_runs(example_ct):
    seg = Segmenter(device="cpu")  # the bundled demo model (trained; finds the bladder in this CT)
    ct = sitk.ReadImage(str(example_ct))
    return seg, ct, {loc: seg.segment(ct, anatomies=["UrinaryBladder"], locate=loc) for loc in (False, True, None)}


def test_locating_a_subset_runs_fewer_tiles_and_keeps_its_labels(demo_runs):
    seg, ct, runs = demo_runs
    off, on = runs[False], runs[True]
    assert off.settings["locate"]["used"] is False and on.settings["locate"]["found"] == [True]
    assert runs[None].settings["locate"]["used"] is True  # a subset: on by default
    assert on.settings["tiles_run"]["encoder"] < off.settings["tiles_run"]["encoder"]
    (z0, z1), (y0, y1), (x0, x1) = on.settings["locate"]["regions"][0]
    full_region = off.settings["locate"]["regions"][0]
    assert (y1 - y0) * (x1 - x0) < (full_region[1][1] - full_region[1][0]) * (full_region[2][1] - full_region[2][0])
    bladder = seg.catalog.by_name("UrinaryBladder").label
    a, b = off.array() == bladder, on.array() == bladder
    assert a.sum() > 1000
    assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) > 0.97  # tiles sit differently: not bit-equal
    assert "locate" in on.timings


def test_nothing_found_falls_back_to_the_slab(demo_runs):
    seg, ct, _ = demo_runs
    on = seg.segment(ct, anatomies=["Liver"], locate=True)  # the demo model finds no liver in this pelvis
    off = seg.segment(ct, anatomies=["Liver"], locate=False)
    assert on.settings["locate"]["found"] == [False]
    assert on.settings["locate"]["regions"] == off.settings["locate"]["regions"]
    assert on.settings["tiles_run"] == off.settings["tiles_run"]
    np.testing.assert_array_equal(on.array(), off.array())


def test_full_set_and_fast_mode_do_not_locate(demo_runs):
    seg, ct, _ = demo_runs
    small = ct[::2, ::2, ::2]
    assert seg.segment(small, fast=True, anatomies=["UrinaryBladder"]).settings["locate"]["used"] is False
    assert seg.segment(small, regions=None).settings["locate"]["used"] is False
