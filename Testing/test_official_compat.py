"""Official-compatible inference (``OfficialCompat``): each option changes what it should and nothing else,
imported official models record it, our own models keep clnet's behaviour, and with every option on the
sliding window's probabilities equal an independent official-style (nnU-Net v1) computation."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from clnet.errors import ModelError
from clnet.inference.official_crop import gated_slices, grow_box, official_body_box
from clnet.inference.preprocessing import Geometry, normalize_ct, prepare, resample_into, spacing_grid
from clnet.inference.sliding_window import padding_widths, sliding_window
from clnet.inference.spline import separate_axis
from clnet.inference.tiling import TileGrid, tile_starts
from clnet.manifest import Manifest, Normalization, OfficialCompat, Preprocessing
from clnet.model.factory import build_manifest, random_network, tiny_encoder
from scipy import ndimage

PATCH = (12, 16, 24)  # a multiple of the tiny encoder's (4, 8, 8)
NORM = Normalization(-1000.0, 1500.0, -200.0, 400.0)


@pytest.fixture(scope="module")
def network():
    prep = Preprocessing(patch_size_zyx=PATCH, normalization=NORM, overlap=0.2)
    manifest = build_manifest("compat", tiny_encoder(), {"a": ["Liver", "Spleen"], "b": ["Kidney_L"]}, prep)
    return random_network(manifest, seed=5).eval()


def _run(network, volume, **options) -> dict[str, np.ndarray]:
    """Our sliding window's weighted-mean probabilities per decoder, (classes, *volume.shape)."""
    out = {d: np.full((network.decoders[d].config.num_classes, *volume.shape), np.nan, np.float32) for d in "ab"}

    def collect(block):
        for d, p in block.probabilities.items():
            out[d][(slice(None), *block.box)] = p

    sliding_window(network, volume, ["a", "b"], PATCH, 0.2, collect, torch.device("cpu"), pad_value=0.0,
                   precision=None, keep_probabilities=True, **options)
    assert not any(np.isnan(v).any() for v in out.values())
    return out


# --------------------------------------------------------------------------- independent official re-implementation
def nnunet_gaussian(patch, sigma_scale=1.0 / 8) -> np.ndarray:
    """nnU-Net v1 ``_get_gaussian``: a blurred unit impulse at patch // 2, peak 1, zeros replaced."""
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(impulse, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = (g / g.max()).astype(np.float32)
    g[g == 0] = g[g != 0].min()
    return g


def nnunet_steps(patch, size, step_size):
    """nnU-Net v1 ``_compute_steps_for_sliding_window`` for one axis."""
    n = int(np.ceil((size - patch) / (patch * step_size))) + 1
    actual = (size - patch) / (n - 1) if n > 1 else 99999999999
    return [int(np.round(actual * i)) for i in range(n)]


def official_probabilities(network, volume: np.ndarray, patch=PATCH, step_size=0.8) -> dict[str, np.ndarray]:
    """The official sliding window: pad centred (pad_nd_image), nnU-Net steps, Gaussian, softmax,
    weighted average, padding cropped off; plain forward in float64 accumulation."""
    diff = [max(0, p - s) for s, p in zip(volume.shape, patch)]
    pads = [(d // 2, d // 2 + d % 2) for d in diff]
    data = np.pad(volume, pads, constant_values=0)
    steps = [nnunet_steps(p, s, step_size) for p, s in zip(patch, data.shape)]
    n_tiles = int(np.prod([len(s) for s in steps]))
    weight = nnunet_gaussian(patch) if n_tiles > 1 else np.ones(patch, np.float32)
    acc = {d: np.zeros((network.decoders[d].config.num_classes, *data.shape)) for d in network.decoders}
    total = np.zeros(data.shape)
    for z in steps[0]:
        for y in steps[1]:
            for x in steps[2]:
                box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                with torch.no_grad():
                    logits = network(torch.from_numpy(np.ascontiguousarray(data[box]))[None, None].float())
                for d, lg in logits.items():
                    acc[d][(slice(None), *box)] += torch.softmax(lg[0].double(), 0).numpy() * weight
                total[box] += weight
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, volume.shape))
    return {d: (a / total)[(slice(None), *crop)] for d, a in acc.items()}


# --------------------------------------------------------------------------- each option on its own
@pytest.mark.parametrize("patch,sigma_scale", [((16, 32, 32), 0.125), ((13, 10, 21), 0.125), ((24, 16, 20), 1 / 16)])
def test_official_gaussian_matches_nnunet(patch, sigma_scale):
    from clnet.inference.importance import importance_map

    ours = importance_map(patch, sigma_scale, "official").numpy()
    want = nnunet_gaussian(patch, sigma_scale)
    np.testing.assert_allclose(ours, want, rtol=2e-6, atol=0)
    assert ours[tuple(p // 2 for p in patch)] == 1.0 and ours.min() > 0
    if sigma_scale < 0.1:  # truncated at 4σ: the zeros became the smallest non-zero weight
        assert (ours == ours.min()).sum() > 1
    clnet = importance_map(patch, sigma_scale, "clnet").numpy()
    assert clnet.min() >= 1e-4 and np.abs(clnet - ours).max() > 1e-3  # a different map


def test_official_tile_steps_match_nnunet():
    for patch in (12, 96, 112, 128):
        for size in range(patch, 4 * patch):
            assert tile_starts(size, patch, 0.2, "official") == nnunet_steps(patch, size, 0.8), (patch, size)
    # clnet rounds the step down first: 291 slices with a 112 patch take 4 tiles in clnet, 3 officially.
    assert len(tile_starts(291, 112, 0.2)) == 4 and len(tile_starts(291, 112, 0.2, "official")) == 3
    assert tile_starts(300, 112, 0.2) == tile_starts(300, 112, 0.2, "official")


def test_padding_widths():
    assert padding_widths((7, 16, 30), PATCH, "end") == [(0, 5), (0, 0), (0, 0)]
    assert padding_widths((7, 16, 30), PATCH, "centred") == [(2, 3), (0, 0), (0, 0)]  # odd voxel after


def test_centred_padding_only_moves_the_volume_in_the_tile(network):
    """Centred padding = clnet's end padding applied to the volume shifted by the centred offset."""
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(7, 30, 40)).astype(np.float32)  # shorter than the patch along z
    centred = _run(network, volume, tile_padding="centred")
    shifted = np.pad(volume, [(2, 0), (0, 0), (0, 0)])  # (12 - 7) // 2 = 2 voxels before
    end = _run(network, shifted, tile_padding="end")
    default = _run(network, volume)
    for d in "ab":
        np.testing.assert_array_equal(centred[d], end[d][:, 2:])
        assert np.abs(centred[d] - default[d]).max() > 1e-3  # and it does change the result


def test_gaussian_changes_only_voxels_several_tiles_cover(network):
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(20, 30, 40)).astype(np.float32)
    ours, official = _run(network, volume), _run(network, volume, gaussian="official")
    cover = np.zeros(volume.shape, int)
    for origin in TileGrid(volume.shape, PATCH, 0.2).tiles:
        cover[tuple(slice(o, o + p) for o, p in zip(origin, PATCH))] += 1
    alone, shared = cover == 1, cover > 1
    assert alone.any() and shared.any()
    for d in "ab":
        diff = np.abs(ours[d] - official[d]).max(axis=0)
        assert diff[alone].max() < 1e-6  # one tile: its weight cancels
        assert diff[shared].max() > 1e-3


def test_parity_with_an_official_style_computation(network):
    """Every option on: our probabilities equal the nnU-Net v1 sliding window on the same network."""
    rng = np.random.default_rng(3)
    for shape in [(9, 40, 30), (25, 16, 50)]:  # padded centred along z / tiled along z and x
        volume = rng.normal(size=shape).astype(np.float32)
        ours = _run(network, volume, tile_padding="centred", gaussian="official", tile_steps="official")
        default = _run(network, volume)
        official = official_probabilities(network, volume)
        for d in "ab":
            want = official[d]
            diff = float(np.abs(ours[d] - want).max())
            print(f"{shape} {d}: max |p - official| {diff:.2e}, clnet defaults {np.abs(default[d] - want).max():.2e}")
            assert diff < 1e-5
            assert np.abs(default[d] - want).max() > 1e-3


# --------------------------------------------------------------------------- preprocessing
def _ct(spacing=(3.0, 3.0, 3.0), size=(40, 36, 24), seed=0) -> sitk.Image:
    """A body-like synthetic CT (x, y, z size): an ellipse of soft tissue with bone, air around, a thin
    table under it and a small separate blob."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    zz, yy, xx = np.mgrid[:nz, :ny, :nx]
    arr = np.full((nz, ny, nx), -1000.0)
    body = ((xx - nx / 2) / (nx / 3)) ** 2 + ((yy - ny / 2.2) / (ny / 3.5)) ** 2 < 1
    body &= (zz >= 3) & (zz < nz - 2)
    arr[body] = rng.normal(40, 30, body.sum())
    arr[body & ((xx - nx / 2) ** 2 + (yy - ny / 2.2) ** 2 < 9)] = 700.0  # "bone"
    arr[:, ny - 3, 2 : nx - 2] = 100.0  # table: one voxel thick, removed by the opening
    arr[nz // 2, 1:9, 1:9] = 50.0  # a small blob: not the largest component
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin((-50.0, 20.0, 100.0))
    return img


def _official_box_reference(arr_zyx: np.ndarray, patch, keep=None):
    """The official crop transcribed from bm_coarse_gen + crop_to_body_mask + reshape_bbox."""
    struct = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 2), 3)
    mask = np.zeros(arr_zyx.shape, np.int8)
    cc, relabel = sitk.ConnectedComponentImageFilter(), sitk.RelabelComponentImageFilter()
    cc.SetFullyConnected(False)
    relabel.SortByObjectSizeOn()
    for z in range(arr_zyx.shape[0]):
        m = ndimage.binary_dilation(ndimage.binary_erosion(arr_zyx[z] > -200, structure=struct), structure=struct)
        lab = sitk.GetArrayFromImage(relabel.Execute(cc.Execute(sitk.GetImageFromArray(m.astype(np.int8)))))
        lab[lab > 1] = 0
        mask[z] = ndimage.binary_fill_holes(lab)
    if keep is not None:
        mask[~keep] = 0
    where = np.where(mask != 0)
    return _reshape_bbox_reference([[int(w.min()), int(w.max()) + 1] for w in where], mask.shape, patch)


def _reshape_bbox_reference(bbox, size, patch):
    """The official ``reshape_bbox``, transcribed."""
    bbox = [list(b) for b in bbox]
    for i, (img_s, patch_s) in enumerate(zip(size, patch)):
        if bbox[i][1] - bbox[i][0] < patch_s:
            center = bbox[i][0] + (bbox[i][1] - bbox[i][0]) / 2
            upper, lower = int(center + patch_s / 2), int(center - patch_s / 2)
            ru, rl = img_s - upper - 1, lower
            if ru < 0:
                upper = img_s
                lower = rl + ru if rl + ru > 0 else 0
            if rl < 0:
                lower = 0
                upper = ru - rl if ru - rl > 0 else img_s
            bbox[i] = [lower, upper]
        bbox[i] = [max(0, bbox[i][0] - int(patch_s / 4)), min(img_s, bbox[i][1] + int(patch_s / 4))]
    return bbox


@pytest.mark.parametrize("patch", [(8, 16, 16), (40, 16, 48)])
def test_official_body_box_matches_the_official_code(patch):
    img = _ct()
    arr = sitk.GetArrayFromImage(img)
    want = _official_box_reference(arr, patch)
    start, extent = official_body_box(sitk.GetArrayViewFromImage(img), patch)
    assert [[s, s + e] for s, e in zip(start[::-1], extent[::-1])] == want
    keep = np.zeros(arr.shape[0], bool)
    keep[8:12] = True  # body-part gating keeps four slices
    want = _official_box_reference(arr, patch, keep)
    start, extent = official_body_box(arr, patch, keep)
    assert [[s, s + e] for s, e in zip(start[::-1], extent[::-1])] == want


def test_grow_box_follows_the_official_arithmetic():
    rng = np.random.default_rng(4)
    quirk = 0
    for _ in range(2000):
        size = rng.integers(20, 200, 3).tolist()
        patch = rng.integers(8, 160, 3).tolist()
        box = [sorted(rng.integers(0, s, 2).tolist()) for s in size]
        box = [[lo, hi + 1] for lo, hi in box]
        grown = grow_box(box, size, patch)
        assert grown == _reshape_bbox_reference(box, size, patch)
        assert all(0 <= lo < hi <= s for (lo, hi), s in zip(grown, size))
        # the official quirk: a box that would start before 0 ends beyond lo + patch
        quirk += any(hi - lo > p + 2 * (p // 4) for (lo, hi), p, s in zip(grown, patch, size) if p < s)
    assert quirk > 0


def test_official_crop_changes_only_the_box():
    img = _ct()
    prep = Preprocessing(spacing_zyx=(2.0, 2.0, 2.0), patch_size_zyx=(8, 16, 16), normalization=NORM,
                         body_threshold_hu=-500.0)
    ours = prepare(img, prep)
    official = prepare(img, prep, compat=OfficialCompat(body_crop="official"))
    assert (official.crop_index_xyz, official.crop_size_xyz) != (ours.crop_index_xyz, ours.crop_size_xyz)
    for p in (ours, official):  # either way: the grid over that box, resampled and normalised alike
        want = spacing_grid(Geometry.of(img).region(p.crop_index_xyz, p.crop_size_xyz), (2.0, 2.0, 2.0))
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(p.grid, get)() == pytest.approx(getattr(want, get)())
        np.testing.assert_array_equal(p.data, normalize_ct(resample_into(img, p.grid, default_value=-1024.0), NORM))
    # the official box: the patch counted in input voxels, a quarter patch on each side
    start, extent = official_body_box(sitk.GetArrayViewFromImage(img), (8, 16, 16))
    assert list(official.crop_index_xyz) == start and list(official.crop_size_xyz) == extent
    plans_patch = replace(prep, crop_patch_zyx=(4, 8, 8))  # a recorded plans patch sets the margin instead
    assert prepare(img, plans_patch, compat=OfficialCompat(body_crop="official")).crop_size_xyz != extent


def _spline_reference(img: sitk.Image, prepared, separate: int | None = None) -> np.ndarray:
    """scipy's order-3 spline (nearest boundary, as skimage's resize with mode="edge") of the crop, at the
    model grid's voxel centres, found through world coordinates; order 0 along ``separate``."""
    (x0, y0, z0), (nx, ny, nz) = prepared.crop_index_xyz, prepared.crop_size_xyz
    crop = img[x0 : x0 + nx, y0 : y0 + ny, z0 : z0 + nz]
    arr = sitk.GetArrayFromImage(crop).astype(np.float64)
    gx, gy, gz = prepared.grid.GetSize()
    axes = []
    for axis_xyz, n in ((2, gz), (1, gy), (0, gx)):
        idx = [0, 0, 0]
        pos = []
        for i in range(n):
            idx[axis_xyz] = i
            point = prepared.grid.TransformIndexToPhysicalPoint(idx)
            pos.append(crop.TransformPhysicalPointToContinuousIndex(point)[axis_xyz])
        axes.append(np.array(pos))
    if separate is None:
        coords = np.meshgrid(*axes, indexing="ij")
        out = ndimage.map_coordinates(arr, coords, order=3, mode="nearest")
    else:  # official separate-z: each plane across the coarse axis in order 3, then order 0 along it
        assert separate == 0
        planes = np.stack([ndimage.map_coordinates(a, np.meshgrid(axes[1], axes[2], indexing="ij"), order=3,
                                                   mode="nearest") for a in arr])
        coords = np.meshgrid(axes[0], np.arange(gy), np.arange(gx), indexing="ij")
        out = ndimage.map_coordinates(planes, coords, order=0, mode="nearest")
    return (np.clip(out, NORM.clip_low, NORM.clip_high) - NORM.mean) / NORM.std


@pytest.mark.parametrize("anisotropic", [False, True])
def test_spline_resampling_changes_values_not_the_grid(anisotropic):
    spacing = (0.9, 0.9, 4.0) if anisotropic else (3.0, 3.0, 3.0)
    img = _ct(spacing=spacing, size=(48, 44, 14) if anisotropic else (40, 36, 24))
    prep = Preprocessing(spacing_zyx=(1.5, 1.5, 1.5), patch_size_zyx=(8, 16, 16), normalization=NORM)
    linear = prepare(img, prep)
    spline = prepare(img, prep, compat=OfficialCompat(image_resampling="spline3"))
    assert (spline.crop_index_xyz, spline.crop_size_xyz) == (linear.crop_index_xyz, linear.crop_size_xyz)
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(spline.grid, get)() == getattr(linear.grid, get)()
    assert spline.data.shape == linear.data.shape and spline.data.dtype == np.float32
    assert np.abs(spline.data - linear.data).max() > 0.05  # the values do change
    assert separate_axis(spacing[::-1], (1.5, 1.5, 1.5)) == (0 if anisotropic else None)
    want = _spline_reference(img, spline, 0 if anisotropic else None)
    assert np.abs(spline.data - want).max() < 1e-5


# --------------------------------------------------------------------------- manifests, importer, Segmenter
def test_manifest_round_trip_and_validation():
    manifest = build_manifest("m", tiny_encoder(), {"a": ["Liver"]})
    assert "inference" not in manifest.to_dict() and not manifest.compat.enabled  # clnet models: as before
    manifest.compat = OfficialCompat.official()
    back = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert back.compat == OfficialCompat.official() and back.compat.enabled
    assert back.to_dict()["inference"]["official_compat"]["tile_padding"] == "centred"
    bad = manifest.to_dict()
    bad["inference"]["official_compat"]["gaussian"] = "fancy"
    with pytest.raises(ModelError, match="gaussian"):
        Manifest.from_dict(bad)
    prep = Preprocessing(crop_patch_zyx=(32, 64, 64))
    assert Preprocessing.from_dict(prep.to_dict()).crop_patch_zyx == (32, 64, 64)
    assert "crop_patch_zyx" not in Preprocessing().to_dict()


def test_cli_option():
    from clnet.cli_options import add_segment_options

    p = argparse.ArgumentParser()
    add_segment_options(p)
    assert p.parse_args([]).official_compat is None
    assert p.parse_args(["--official-compat", "off"]).official_compat == "off"
    with pytest.raises(SystemExit):
        p.parse_args(["--official-compat", "maybe"])


def test_gated_slices_keep_one_more_slice_like_the_official_code():
    geometry = Geometry((4, 4, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    z_mm = np.arange(10) * 2.0
    scores = np.arange(10) * 10.0  # slice k scores 10 k
    keep = gated_slices(geometry, z_mm, scores, {"a": (25.0, 55.0), "b": None}, ["a"])
    assert np.flatnonzero(keep).tolist() == [3, 4, 5, 6]  # 3..5 inside the window, plus one
    assert gated_slices(geometry, z_mm, scores, {"a": (25.0, 55.0), "b": None}, ["a", "b"]) is None


@pytest.fixture(scope="module")
def official_model(tmp_path_factory):
    """A one-head synthetic release in the official layout, imported (patch 112×96×128, plans patch
    32×64×64)."""
    from clnet.official import import_official
    from clnet.official.plans import head_anatomies
    from test_official_import import _save, _task_dir, fake_decoder, fake_encoder, plans_json

    root = tmp_path_factory.mktemp("official-compat") / "results"
    enc = fake_encoder(1)
    d = _task_dir(root, "Task001_SuperGeneralEncoder")
    (d / "plans.json").write_text(json.dumps(plans_json([3.0, 3.0, 3.0], (-995, 1265, -187.8, 490.7))))
    _save(d / "all" / "model_final_checkpoint.model", {f"encoder.{k}": v for k, v in enc.items()})
    head, k = "MERGED_HN3", len(head_anatomies("MERGED_HN3"))
    dec = fake_decoder(10, 4, k + 1)
    td = _task_dir(root, "Task902_HN_decoder3")
    (td / "plans.json").write_text(json.dumps(plans_json([3.0, 3.0, 3.0], (-990.0, 1250.0, -180.0, 480.0))))
    _save(td / "all" / "model_final_checkpoint.model",
          {**{f"decoder_dict.{head}.{kk}": v for kk, v in dec.items()},
           **{f"ema_dict.{head}.{kk}": v for kk, v in dec.items()}})
    out = tmp_path_factory.mktemp("imported-compat") / "model"
    import_official(root, out, name="official-compat-test")
    return out


def test_importer_records_official_compat(official_model):
    from clnet.checkpoint import read_manifest

    m = read_manifest(official_model)
    assert m.compat == OfficialCompat.official()
    prep = m.decoder_preprocessing("MERGED_HN3")
    assert prep.patch_size_zyx == (112, 96, 128) and prep.crop_patch_zyx == (32, 64, 64)


def test_segmenter_switch(official_model, ct_crop):
    from clnet.inference import Segmenter

    img = sitk.ReadImage(str(ct_crop))
    default = Segmenter(official_model, device="cpu", gating=False)
    on = default.segment(img, force=True)
    assert on.settings["official_compat"] == {"enabled": True, "source": "model", **OfficialCompat.official().to_dict()}
    off = default.segment(img, force=True, official_compat="off")
    assert off.settings["official_compat"] == {"enabled": False, "source": "argument", **OfficialCompat().to_dict()}
    off2 = Segmenter(official_model, device="cpu", gating=False, official_compat=False).segment(img, force=True)
    assert off2.settings["official_compat"]["source"] == "segmenter"
    a, b = sitk.GetArrayViewFromImage(on.labels), sitk.GetArrayViewFromImage(off.labels)
    np.testing.assert_array_equal(b, sitk.GetArrayViewFromImage(off2.labels))
    assert on.labels.GetSize() == img.GetSize() and (a != b).any()
    with pytest.raises(Exception, match="on or off"):
        Segmenter(official_model, device="cpu", official_compat="sometimes")


def test_our_models_keep_clnet_behaviour(ct_crop):
    from clnet.checkpoint import read_manifest
    from clnet.inference import Segmenter
    from clnet.registry import BUNDLED_MODELS_DIR

    demo = read_manifest(BUNDLED_MODELS_DIR / "demo")
    assert demo.compat == OfficialCompat() and "inference" not in demo.to_dict()
    seg = Segmenter("demo", device="cpu")
    img = sitk.ReadImage(str(ct_crop))
    result = seg.segment(img, fast=True, force=True)
    assert result.settings["official_compat"] == {"enabled": False, "source": "model", **OfficialCompat().to_dict()}
    forced = seg.segment(img, fast=True, force=True, official_compat=True)
    assert forced.settings["official_compat"]["enabled"] and any("not an imported official" in w for w in forced.warnings)


def test_command_line_and_batch_pass_the_switch(official_model, ct_crop, tmp_path):
    from clnet.batch import run_batch
    from clnet.cli import main

    out = tmp_path / "cli"
    assert main(["segment", str(ct_crop), "-o", str(out), "--model", str(official_model), "--force",
                 "--official-compat", "off", "--progress", "none"]) == 0
    settings = json.loads((out / "segmentation.json").read_text())["settings"]
    assert settings["official_compat"]["enabled"] is False and settings["official_compat"]["source"] == "segmenter"
    summary = run_batch([ct_crop], tmp_path / "batch", model=str(official_model), official_compat="off", force=True,
                        progress=False)
    assert summary.failed == [] and summary.counts["ok"] == 1
    case = next(p for p in (tmp_path / "batch").iterdir() if (p / "segmentation.json").is_file())
    assert json.loads((case / "segmentation.json").read_text())["settings"]["official_compat"]["enabled"] is False
