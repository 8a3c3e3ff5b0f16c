"""The inference pipeline end to end on the real CT with a random-weight model (see conftest):
geometry round trips, subsets, merge rule, progress and cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.errors import CancelledError, ClnetError
from clnet.inference import Segmenter
from clnet.inference.accumulator import BlockResult
from clnet.inference.merge import LabelMerger
from clnet.inference.preprocessing import labels_to_input_grid, resample_to_spacing
from clnet.inference.tiling import tile_starts


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    return Segmenter(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def ct(ct_crop):
    return sitk.ReadImage(str(ct_crop))


@pytest.fixture(scope="module")
def full(segmenter, ct):
    return segmenter.segment(ct)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def flipped_same_world(img: sitk.Image, axis_xyz: int) -> sitk.Image:
    """The same world image stored with one array axis reversed (direction and origin adjusted)."""
    arr = sitk.GetArrayFromImage(img)
    out = sitk.GetImageFromArray(np.flip(arr, axis=2 - axis_xyz).copy())
    out.SetSpacing(img.GetSpacing())
    d = np.array(img.GetDirection()).reshape(3, 3)
    idx = [0, 0, 0]
    idx[axis_xyz] = img.GetSize()[axis_xyz] - 1
    out.SetOrigin(img.TransformIndexToPhysicalPoint(idx))
    d[:, axis_xyz] *= -1
    out.SetDirection(d.ravel().tolist())
    return out


def permuted_same_world(img: sitk.Image) -> sitk.Image:
    """The same world image stored with x and z swapped."""
    arr = sitk.GetArrayFromImage(img)  # z, y, x
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    sp = img.GetSpacing()
    out.SetSpacing((sp[2], sp[1], sp[0]))
    out.SetOrigin(img.GetOrigin())
    d = np.array(img.GetDirection()).reshape(3, 3)
    out.SetDirection(d[:, [2, 1, 0]].ravel().tolist())
    return out


def test_output_is_on_the_input_grid_with_catalog_labels(full, ct, segmenter):
    assert same_grid(full.labels, ct)
    assert full.labels.GetPixelID() == sitk.sitkUInt8
    values = set(np.unique(full.array()).tolist()) - {0}
    allowed = {a.label for a in segmenter.available}
    assert values and values <= allowed
    assert {a.label for a in full.present} == values
    assert full.settings["decoders_run"] == ["abdomen", "spine"]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_axes_give_the_same_labels_voxel_for_voxel(segmenter, ct, full, axis):
    flipped = flipped_same_world(ct, axis)
    res = segmenter.segment(flipped)
    assert same_grid(res.labels, flipped)
    back = np.flip(sitk.GetArrayFromImage(res.labels), axis=2 - axis)
    np.testing.assert_array_equal(back, full.array())


def test_permuted_axes_give_the_same_labels(segmenter, ct, full):
    perm = permuted_same_world(ct)
    res = segmenter.segment(perm)
    assert same_grid(res.labels, perm)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res.labels).transpose(2, 1, 0), full.array())


def test_oblique_direction_keeps_voxel_alignment(segmenter, ct, full):
    """Rotating the whole image (direction matrix) must rotate the result with it: same voxels."""
    oblique = sitk.Image(ct)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique.SetDirection((rot @ np.array(ct.GetDirection()).reshape(3, 3)).ravel().tolist())
    res = segmenter.segment(oblique)
    assert same_grid(res.labels, oblique)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res.labels), full.array())


def test_left_handed_direction_is_handled(segmenter, ct):
    lh = flipped_same_world(ct, 0)
    d = np.array(lh.GetDirection()).reshape(3, 3)
    assert np.linalg.det(d) < 0
    assert same_grid(segmenter.segment(lh).labels, lh)


def test_subset_matches_full_run_inside_each_decoder(segmenter, ct, full):
    sub = segmenter.segment(ct, anatomies=["spleen", "Kidney_L"])  # aliases accepted
    assert [a.name for a in sub.requested] == sorted(["Spleen", "Kidney_L"], key=lambda n: segmenter.catalog.by_name(n).label)
    assert sub.settings["decoders_run"] == ["abdomen"]
    subset = {a.label for a in sub.requested}
    f, s = full.array(), sub.array()
    assert set(np.unique(s).tolist()) <= subset | {0}
    # Where the full run says Spleen/Kidney_L, so does the subset run.
    in_full = np.isin(f, list(subset))
    np.testing.assert_array_equal(s[in_full], f[in_full])
    # Anything else the subset run labels was, in the full run, won by the spine decoder (a
    # cross-decoder conflict the subset run cannot see) — never background, never another label
    # of the abdomen decoder.
    spine_only = {segmenter.catalog.by_name(n).label for n in ("Bone_Vert_L1", "Bone_Vert_L2")}
    extra = (s > 0) & ~in_full
    assert set(np.unique(f[extra]).tolist()) <= spine_only | {segmenter.catalog.by_name("Liver").label}


def test_region_selection_and_unavailable_anatomy(segmenter):
    assert {a.name for a in segmenter.resolve(regions=["skeleton"])} == {"Bone_Vert_L1", "Bone_Vert_L2"}
    with pytest.raises(ClnetError, match="cannot segment Heart"):
        segmenter.resolve(anatomies=["Heart"])
    with pytest.raises(ClnetError, match="segments nothing"):
        segmenter.resolve(regions=["lns-hn"])


def test_fast_mode_runs_on_the_coarser_grid(segmenter, ct):
    res = segmenter.segment(ct, fast=True)
    assert res.settings["fast"] and res.settings["spacing_zyx"] == [6.0, 6.0, 6.0]
    assert same_grid(res.labels, ct)


def test_progress_reaches_one_and_cancel_stops(segmenter, ct):
    seen = []
    segmenter.segment(ct, anatomies=["Liver"], progress=lambda stage, f: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    stop = threading.Event()

    def cancel_at_first_tile(stage, fraction):
        if stage.startswith("Network: tile"):
            stop.set()

    with pytest.raises(CancelledError):
        segmenter.segment(ct, progress=cancel_at_first_tile, cancel=stop)


def test_input_image_is_not_modified(segmenter, ct):
    before = sitk.GetArrayFromImage(ct).copy()
    geometry = (ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection())
    segmenter.segment(ct, anatomies=["Liver"])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), before)
    assert (ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection()) == geometry


def test_labels_round_trip_through_a_finer_grid_without_shift():
    """Model grid → input grid is nearest neighbour in world coordinates: a block pattern at 3 mm
    lands on a 1 mm grid with its edges at the right physical place and no new values."""
    grid = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    grid.SetSpacing((3, 3, 3))
    grid.SetOrigin((1.0, 2.0, 3.0))
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 3:7, 4:8] = 7
    fine = resample_to_spacing(grid, (1, 1, 1), sitk.sitkNearestNeighbor)
    out = sitk.GetArrayFromImage(labels_to_input_grid(labels, grid, fine))
    assert set(np.unique(out).tolist()) == {0, 7}
    zs, ys, xs = np.nonzero(out == 7)
    # 3 mm voxels 4..7 along x span 4*3-1.5 .. 7*3+1.5 mm relative to the origin → 12 fine voxels.
    assert xs.max() - xs.min() + 1 == 12 and ys.max() - ys.min() + 1 == 12 and zs.max() - zs.min() + 1 == 9


def test_tile_starts_cover_the_axis():
    for size, patch in [(10, 32), (32, 32), (100, 32), (129, 64)]:
        starts = tile_starts(max(size, patch), patch, 0.5)
        assert starts[0] == 0 and starts[-1] + patch == max(size, patch)
        assert all(b - a <= patch // 2 for a, b in zip(starts, starts[1:]))


def test_merge_rule_confidence_then_order():
    lut_a = np.array([0, 10, 11], np.uint16)
    lut_b = np.array([0, 20], np.uint16)
    m = LabelMerger((1, 1, 4), {"a": lut_a, "b": lut_b}, ["a", "b"])
    labels = {"a": np.array([[[1, 2, 0, 1]]], np.uint8), "b": np.array([[[1, 1, 1, 1]]], np.uint8)}
    conf = {"a": np.array([[[200, 100, 250, 90]]], np.uint8), "b": np.array([[[100, 150, 50, 90]]], np.uint8)}
    m.add(BlockResult((slice(0, 1), slice(None), slice(None)), labels, conf))
    # voxel 0: a more confident; 1: b more confident; 2: only b claims; 3: tie → first decoder (a).
    np.testing.assert_array_equal(m.labels[0, 0], [10, 20, 20, 10])
    assert m.conflicts == 1


def test_per_decoder_maps_use_head_local_values(segmenter, ct, full):
    res = segmenter.segment(ct, per_decoder=True)
    assert set(res.decoder_labels) == {"abdomen", "spine"}
    abd = sitk.GetArrayFromImage(res.decoder_labels["abdomen"])
    assert set(np.unique(abd).tolist()) <= {0, 1, 2, 3, 4}
    spleen = segmenter.catalog.by_name("Spleen").label
    # Where the merged map says Spleen, the abdomen head said its channel 2 (Spleen).
    assert np.all(abd[res.array() == spleen] == 2)
    assert res.label_map()["decoder_label_files"]["abdomen"]["2"] == "Spleen"


def test_decoders_with_their_own_preprocessing_run_as_groups(tiny_model_dir, ct, tmp_path):
    """Imported official heads may each have their own spacing: they run in separate groups and
    are merged on the input grid."""
    import json
    import shutil

    model = tmp_path / "grouped"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    own = dict(manifest["preprocessing"], spacing_zyx=[4.0, 4.0, 4.0])
    manifest["decoders"]["spine"]["info"]["preprocessing"] = own
    (model / "manifest.json").write_text(json.dumps(manifest))
    res = Segmenter(model, device="cpu").segment(ct)
    assert res.settings["preprocessing_groups"] == 2
    assert same_grid(res.labels, ct)
    values = set(np.unique(res.array()).tolist())
    spine = {Segmenter(model).catalog.by_name(n).label for n in ("Bone_Vert_L1", "Bone_Vert_L2")}
    assert values & spine


def test_bodypart_gating_skips_decoders_outside_their_window(tiny_model_dir, example_ct, tmp_path):
    """The real CT's slices 50-89 (full width, so the body-part model sees whole slices) score
    about 21-36: a decoder windowed to the head (80-105) never runs; a decoder windowed to the
    abdomen decides exactly as it does ungated."""
    import json
    import shutil

    ct = sitk.ReadImage(str(example_ct))[:, :, 50:90]
    model = tmp_path / "gated"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["decoders"]["spine"]["bodypart_range"] = [80.0, 105.0]
    manifest["decoders"]["abdomen"]["bodypart_range"] = [-5.0, 60.0]
    (model / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(model, device="cpu")
    res = seg.segment(ct)
    assert res.settings["bodypart_gating"]["used"]
    assert res.settings["bodypart_gating"]["skipped_tile_rows"] > 0
    runs = res.settings["tiles_run"]  # the spine decoder never ran; the encoder ran for the abdomen one
    assert runs["spine"] == 0 and runs["abdomen"] == runs["encoder"] > 0
    spine = {seg.catalog.by_name(n).label for n in ("Bone_Vert_L1", "Bone_Vert_L2")}
    assert not set(np.unique(res.array()).tolist()) & spine
    # The abdomen decoder alone, ungated, decides exactly the same voxels.
    alone = Segmenter(model, device="cpu", gating=False).segment(ct, anatomies=["Spleen", "Kidney_L", "Kidney_R"])
    abd = {seg.catalog.by_name(n).label for n in ("Spleen", "Kidney_L", "Kidney_R")}
    np.testing.assert_array_equal(np.isin(res.array(), list(abd)), np.isin(alone.array(), list(abd)))
    ungated = Segmenter(model, device="cpu", gating=False).segment(ct)
    assert not ungated.settings["bodypart_gating"]["used"]
    assert ungated.settings["tiles_run"]["spine"] == ungated.settings["tiles_run"]["encoder"]
    assert set(np.unique(ungated.array()).tolist()) & spine


def test_flip_invariance_holds_with_the_body_crop(segmenter, example_ct):
    """On the whole CT (air around the body, so the body box is smaller than the image) a
    flipped copy still gives the same labels voxel for voxel (fast mode keeps it quick)."""
    whole = sitk.ReadImage(str(example_ct))
    ref = segmenter.segment(whole, fast=True)
    for axis in (0, 1):
        flipped = flipped_same_world(whole, axis)
        back = np.flip(sitk.GetArrayFromImage(segmenter.segment(flipped, fast=True).labels), axis=2 - axis)
        np.testing.assert_array_equal(back, ref.array())


def _blocks(network, volume, decoders, patch, **kwargs) -> list[BlockResult]:
    import torch
    from clnet.inference.sliding_window import sliding_window

    out: list[BlockResult] = []
    sliding_window(network, volume, decoders, patch, 0.5, out.append, torch.device("cpu"), **kwargs)
    return out


def _paint(blocks, shape, decoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, confidences and how often each voxel was decided, from the blocks of one decoder."""
    labels, conf, seen = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, int)
    for b in blocks:
        if decoder in b.labels:
            labels[b.box], conf[b.box] = b.labels[decoder], b.confidence[decoder]
            seen[b.box] += 1
    return labels, conf, seen


def test_uint8_store_decides_like_float32_and_gated_decoders_stop(segmenter):
    """The uint8 store (used when the open cells would be large) changes almost no decision; a
    decoder gated off after the first row of tiles is decided only where that row reached."""
    import torch

    net, manifest = segmenter.model.network, segmenter.manifest
    decoders, patch = list(manifest.decoders), manifest.preprocessing.patch_size_zyx
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(2 * patch[0] + 5, patch[1] + 9, patch[2] + 3)).astype(np.float32)
    full = _blocks(net, volume, decoders, patch, store_dtype=torch.float32)
    small = _blocks(net, volume, decoders, patch, store_dtype=torch.uint8)
    assert [b.box for b in full] == [b.box for b in small]
    for d in decoders:
        a_labels, a_conf, seen = _paint(full, volume.shape, d)
        b_labels, b_conf, _ = _paint(small, volume.shape, d)
        assert (seen == 1).all()  # every voxel decided exactly once
        # Each rounded share is off by at most 0.5/241 and at most 27 tiles cover a voxel, so a winner
        # with probability >= 150/255 (ahead by > 0.12) cannot change; near-ties (common with random
        # weights) can.
        sure = a_conf >= 150
        assert sure.sum() > 1000
        np.testing.assert_array_equal(a_labels[sure], b_labels[sure])
        assert np.mean(a_labels == b_labels) > 0.97
        off = np.abs(a_conf.astype(int) - b_conf.astype(int))
        assert off.max() <= 8 and off.mean() < 1  # at most half a unit per covering tile (here <= 12)

    first = decoders[0]
    gated = _blocks(net, volume, decoders, patch, store_dtype=torch.float32,
                    active_decoders=lambda z0, z1: decoders if z0 == 0 else decoders[1:])
    _, _, seen = _paint(gated, volume.shape, first)
    np.testing.assert_array_equal(seen[: patch[0]], 1)  # the first row of tiles covers [0, patch depth)
    assert not seen[patch[0] :].any()
    for d in decoders[1:]:
        np.testing.assert_array_equal(_paint(full, volume.shape, d)[0], _paint(gated, volume.shape, d)[0])


def test_resampling_in_torch_matches_simpleitk(ct):
    """The GPU preprocessing path (torch grid_sample), run here on the CPU, gives SimpleITK's grid and
    values (up- and downsampling axes), and the sliding window decides the same on the tensor."""
    import torch
    from clnet.inference.preprocessing import prepare
    from clnet.manifest import Normalization, Preprocessing

    prep = Preprocessing(spacing_zyx=(1.5, 4.0, 2.2), patch_size_zyx=(32, 64, 64),
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    ref = prepare(ct, prep)
    dev = prepare(ct, prep, device=torch.device("cpu"))
    assert isinstance(dev.data, torch.Tensor) and tuple(dev.data.shape) == ref.data.shape
    assert same_grid(dev.grid, ref.grid) and dev.crop_index_xyz == ref.crop_index_xyz
    diff = np.abs(dev.data.numpy() - ref.data)
    assert float(diff.max()) * 500.0 < 0.05  # HU
    assert ref.data.std() > 0.1  # real content, not a constant


def test_sliding_window_takes_a_tensor_volume(segmenter):
    import torch

    net, manifest = segmenter.model.network, segmenter.manifest
    decoders, patch = list(manifest.decoders), manifest.preprocessing.patch_size_zyx
    volume = np.random.default_rng(1).normal(size=(patch[0] + 7, patch[1] - 5, patch[2] + 11)).astype(np.float32)
    a = _blocks(net, volume, decoders, patch, pad_value=-2.0)
    b = _blocks(net, torch.from_numpy(volume.copy()), decoders, patch, pad_value=-2.0)
    for x, y in zip(a, b):
        for d in decoders:
            np.testing.assert_array_equal(x.labels[d], y.labels[d])


def test_a_path_input_gives_the_same_result_as_the_image(segmenter, ct, ct_crop, full):
    """Given a path, the Segmenter reads the image itself and lets go of its voxels once they are
    prepared (the result only needs the input's geometry): same labels, same grid."""
    res = segmenter.segment(str(ct_crop))
    assert same_grid(res.labels, ct)
    np.testing.assert_array_equal(res.array(), full.array())


def test_precision_choice(tiny_model_dir, ct, full):
    """float32 is the CPU default (recorded); an unknown precision is refused up front; bf16 on a
    CPU with native bf16 runs the same pipeline and mostly agrees with float32."""
    import torch

    assert full.settings["precision"] == "float32"
    with pytest.raises(ClnetError, match="Unknown precision"):
        Segmenter(tiny_model_dir, device="cpu", precision="fp8")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(ClnetError, match="no native bf16"):
            Segmenter(tiny_model_dir, device="cpu", precision="bf16")
        return
    res = Segmenter(tiny_model_dir, device="cpu", precision="bf16").segment(ct)
    assert res.settings["precision"] == "bfloat16"
    assert same_grid(res.labels, ct)
    a, b = full.array(), res.array()
    assert 0.9 < float(np.mean(a == b)) < 1.0  # bf16 really ran, and it decided most voxels alike
