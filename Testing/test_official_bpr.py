"""The official release's body-part network (bpreg): mapping, safe reading, import, scoring and gating.

No real weights are needed (and CI cannot install bpreg): the tests write a ``public_bpr_model/`` folder
as the release lays it out, with random weights under bpreg's own tensor names whose last layer (fc7)
is fitted so that the scores rise along the test scan (``clnet.bodypart.bpreg_synthetic``). The scores
then take the same path as real ones: preprocessing, VGG16, conv6, fc7, bpreg's transform and cleaning,
CL-Net's gap filling. ``benchmarks/bpr_parity.py`` compares that path with bpreg's own code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from clnet.bodypart.bpreg_import import find_bpr_folder, import_bpr, map_state_dict
from clnet.bodypart.bpreg_network import BpregNetwork, conv_indices
from clnet.bodypart.bpreg_scores import ScoreProcessing, fill_gaps, process_scores
from clnet.bodypart.bpreg_slices import bpreg_slices, linear_taps
from clnet.bodypart.bpreg_synthetic import (
    fit_output_layer,
    pooled_features,
    random_state_dict,
    raw_for_scores,
    score_targets,
    write_release_folder,
)
from clnet.data import example_ct
from clnet.errors import ModelError
from clnet.official import import_official
from clnet.official.plans import head_anatomies
from test_official_import import HEADS, Evil, official_tree  # noqa: F401 - the synthetic release and its fixture

BOTTOM_SCORE = 5.0  # the fitted scores of the test scan: 5 at its lowest slice, +0.1194 per mm
GATED = "Chest_LNS"  # gated to the upper part of the test scan by its window
UNGATED = "MERGED_HN3"


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """bpreg's forward written with torch.nn.functional from bpreg's own tensor names."""
    for i in conv_indices():
        x = F.relu(F.conv2d(x, sd[f"model.{i}.weight"], sd.get(f"model.{i}.bias"), padding=1))
        if f"model.{i + 2}.weight" not in sd:  # the next conv is further on: a max-pool sits between
            x = F.max_pool2d(x, 2, 2)
    x = F.relu(F.conv2d(x, sd["conv6.weight"], sd["conv6.bias"]))
    return F.linear(x.mean(dim=(2, 3)), sd["fc7.weight"], sd["fc7.bias"])[:, 0]


@pytest.fixture(scope="module")
def scan() -> sitk.Image:
    """The example CT, every 4th slice (28 slices of 12 mm) and 64 x 64 voxels in-plane: the whole body
    range at a quarter of the VGG cost, one column of tiles for the segmentation."""
    return sitk.ReadImage(str(example_ct()))[29:93, 18:82, ::4]


@pytest.fixture(scope="module")
def bpr_state(scan) -> dict[str, torch.Tensor]:
    """Random bpreg weights, fc7 fitted so the scan scores BOTTOM_SCORE + 0.1194 / mm upwards."""
    prepared = bpreg_slices(scan)
    state = random_state_dict(seed=5)
    targets = score_targets(prepared.z_mm, BOTTOM_SCORE)
    return fit_output_layer(state, pooled_features(state, prepared.slices), raw_for_scores(targets))


@pytest.fixture(scope="module")
def release(official_tree, bpr_state, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    """The synthetic official results/ tree with a public_bpr_model/ beside clNet/, and a configuration
    whose windows gate GATED to the upper part of the scan and leave UNGATED running everywhere. Both
    heads get the same plans, so they share one preprocessing group (the same tiles)."""
    root = tmp_path_factory.mktemp("bpr-release") / "results"
    shutil.copytree(official_tree["root"], root)
    plans = {head: next((root / "clNet" / "3d_fullres" / task).rglob("plans.json")) for head, (task, *_r) in HEADS.items()}
    shutil.copyfile(plans[UNGATED], plans[GATED])
    write_release_folder(root / "public_bpr_model", bpr_state)
    cfg = {"GeneralEncoder": {"task": "Task001_SuperGeneralEncoder", "type": "GeneralEncoder"}}
    ranges = {UNGATED: {"percentile_00_5": -40.0, "percentile_99_5": 140.0, "min": -40, "max": 140, "mean": 0.0,
                        "std": 1.0},
              GATED: {"percentile_00_5": 32.0, "percentile_99_5": 38.0, "min": 32, "max": 38, "mean": 4.0, "std": 1.0}}
    for head, (task, fold_dir, *_rest) in HEADS.items():
        cfg[head] = {"task": task, "fold": "all" if fold_dir == "all" else 0,
                     "decoders": {head: f"1-{len(head_anatomies(head))}"},
                     "model_training_setup": {"patch_size": {"all": [32, 64, 64]}},
                     "bpr_range_for_decoders": {head: ranges[head]}}
    (root.parent / "cfg.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpr-imported") / "model"
    import_official(release, out, config=release.parent / "cfg.json")
    return out


# ----------------------------------------------------------------------------------------- mapping
def test_every_tensor_maps_by_name_and_shape_and_the_forward_matches_bpreg() -> None:
    state = random_state_dict(seed=1)
    assert len(state) == 29 and state["model.0.weight"].shape == (64, 1, 3, 3) and "model.0.bias" not in state
    net = BpregNetwork()
    net.load_state_dict(map_state_dict(state, "test"), strict=True)
    x = torch.rand(2, 1, 64, 64) * 2 - 1  # any multiple of 32 works; the real input is 128 x 128
    with torch.no_grad():
        diff = float((net.eval()(x) - reference_forward(state, x)).abs().max())
    assert diff <= 1e-5
    # A DDP prefix is accepted; anything else off the layout is named.
    assert set(map_state_dict({f"module.{k}": v for k, v in state.items()}, "test")) == set(net.state_dict())
    bad = dict(state)
    bad["model.0.bias"] = torch.zeros(64)
    del bad["fc7.bias"]
    bad["conv6.weight"] = torch.zeros(512, 256, 1, 1)
    with pytest.raises(ModelError) as err:
        map_state_dict(bad, "model.pt")
    msg = str(err.value)
    assert "missing ['fc7.bias']" in msg and "model.0.bias" in msg and "conv6.weight (512, 256, 1, 1)" in msg


def test_a_pickled_module_is_refused_with_how_to_convert(tmp_path) -> None:
    folder = write_release_folder(tmp_path / "public_bpr_model", random_state_dict(seed=2))
    torch.save(BpregNetwork(), folder / "model.pt")  # a whole module, as `torch.save(model)` writes it
    with pytest.raises(ModelError) as err:
        import_bpr(folder)
    assert "pickled Python object" in str(err.value) and "torch.save(m.state_dict()" in err.value.hint
    marker = tmp_path / "pwned"
    torch.save({"fc7.weight": torch.zeros(1, 512), "hook": Evil(marker)}, folder / "model.pt")
    with pytest.raises(ModelError, match="pickled"):
        import_bpr(folder)
    assert not marker.exists()
    (folder / "inference-settings.json").unlink()
    with pytest.raises(ModelError, match="inference-settings.json"):
        import_bpr(folder)


def test_the_release_folder_is_found_where_it_sits(tmp_path) -> None:
    results = (tmp_path / "snapshot" / "results").resolve()
    bpr = results / "public_bpr_model"
    bpr.mkdir(parents=True)
    (bpr / "model.pt").write_bytes(b"")
    (results / "clNet" / "3d_fullres").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert find_bpr_folder(tmp_path / "snapshot") == bpr  # below the source (a snapshot holding results/)
    assert find_bpr_folder(results) == bpr  # the official layout
    assert find_bpr_folder(results / "clNet" / "3d_fullres") == bpr  # above the source
    assert find_bpr_folder(tmp_path / "elsewhere") is None


# ------------------------------------------------------------------------------ score processing
def processing(**kw) -> ScoreProcessing:
    return ScoreProcessing(transform_min=-2.0, transform_max=6.0, slope_mean=0.12, tangential_slope_min=0.01,
                           tangential_slope_max=0.2, **kw)


def test_landmark_transform_smoothing_fit_and_gap_filling() -> None:
    z = np.arange(40) * 5.0
    scores = 20.0 + 0.12 * z  # a perfect scan, 5 mm slices
    raw = -2.0 + scores * 8.0 / 100.0
    raw[2] = 6.14  # a background slice: dropped, then filled
    p = process_scores(raw, 5.0, processing())
    assert np.isnan(p.cleaned[2]) and np.isfinite(p.filled).all() and p.dropped == 1
    assert p.unprocessed[2] == pytest.approx((6.14 + 2.0) * 100 / 8.0)
    # The 10 mm smoothing runs over the kept slices only; away from the gap and from the (mirrored)
    # ends, a straight line stays itself.
    inner = slice(12, 31)
    assert p.cleaned[inner] == pytest.approx(scores[inner], abs=1e-6)
    assert p.slope == pytest.approx(0.12, rel=0.03) and p.valid_z_spacing  # the ends bend a little and not p.reverse_z_ordering
    # Reversed slice order: same scores backwards, flagged by the negative slope.
    q = process_scores(raw[::-1].copy(), 5.0, processing())
    assert q.reverse_z_ordering and q.slope < 0
    assert fill_gaps(np.array([np.nan, 1.0, 2.0, np.nan, np.nan])) == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert np.isnan(fill_gaps(np.array([np.nan, np.nan]))).all()


def test_outlier_tails_beyond_the_landmarks_are_dropped() -> None:
    z = np.arange(60) * 3.0
    scores = -10.0 + 0.12 * z  # crosses 0 (the start landmark) at slice 28
    scores[:10] = scores[10]  # a flat tail below the pelvis: slope 0 < the lower quantile
    p = process_scores(-2.0 + scores * 8.0 / 100.0, 3.0, processing(smoothing_sigma_mm=0.1))
    # The slopes of slices 0-9 are 0: the tail up to (not including) slice 9 goes.
    assert np.isnan(p.cleaned[:9]).all() and np.isfinite(p.cleaned[9:]).all() and p.dropped == 9
    # CL-Net fills it backwards from slice 9 by the mean slice-to-slice difference.
    step = np.nanmean(np.diff(p.cleaned))
    assert step == pytest.approx((49 * 0.36) / 50, abs=1e-3)
    assert p.filled[:9] == pytest.approx(p.cleaned[9] - step * np.arange(9, 0, -1))


def test_resampling_follows_opencv_bilinear_rule() -> None:
    lo, hi, w_lo, w_hi = linear_taps(4, 2)  # exact halving: the mean of each pair
    assert lo.tolist() == [0, 2] and hi.tolist() == [1, 3] and w_lo.tolist() == [0.5, 0.5]
    lo, hi, w_lo, w_hi = linear_taps(2, 4)  # upsampling: edges repeat
    assert lo.tolist() == [0, 0, 0, 1] and w_hi.tolist() == [0.0, 0.25, 0.75, 0.0]


# --------------------------------------------------------------------------------------- scoring
def test_unscorable_scans_are_reported_before_running_the_network(scan, shared_data) -> None:
    mr = sitk.ReadImage(str(shared_data / "example_mr_sm.nii.gz"))
    assert "does not look like a CT" in bpreg_slices(mr).problem
    assert "single slice" in bpreg_slices(scan[:, :, 10:11]).problem
    coronal = sitk.PermuteAxes(scan, [0, 2, 1])  # slices stacked along y: a coronal acquisition
    assert "not axial" in bpreg_slices(coronal).problem
    assert bpreg_slices(scan).problem is None


# ------------------------------------------------------------------------------- import + gating
def test_import_records_the_network_and_the_loader_verifies_it(imported, release, tmp_path) -> None:
    from clnet.checkpoint import load_model, read_manifest, sha256_file, verify_model

    m = read_manifest(imported)
    bp = m.bodypart
    assert bp is not None and bp.kind == "bpreg-vgg16" and bp.file == "bodypart_bpreg.safetensors"
    assert bp.sha256 == sha256_file(imported / bp.file)
    assert bp.info["files"]["model.pt"]["sha256"] == sha256_file(release / "public_bpr_model" / "model.pt")
    assert bp.settings["score_processing"]["transform_min"] == pytest.approx(-2.7)
    assert bp.settings["preprocessing"]["pixel_mm"] == 3.5 and bp.settings["start_landmark"] == "pelvis_start"
    assert m.extra["official"]["bpr_model"]["used"] is True
    assert load_model(imported).bodypart.kind == "bpreg-vgg16"
    # Continual learning copies the file byte for byte; a changed file is refused on load.
    from clnet.checkpoint import save_model

    loaded = load_model(imported)
    save_model(loaded.network, loaded.manifest, tmp_path / "copy", copy_from=imported)
    assert sha256_file(tmp_path / "copy" / bp.file) == bp.sha256
    data = bytearray((tmp_path / "copy" / bp.file).read_bytes())
    data[-1] ^= 1
    (tmp_path / "copy" / bp.file).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verify_model(tmp_path / "copy")


def test_segmenter_gates_heads_by_the_official_networks_scores(imported, scan) -> None:
    from clnet.inference import Segmenter

    seg = Segmenter(imported, device="cpu")
    assert seg.model.bodypart.kind == "bpreg-vgg16"
    result = seg.segment(scan, force=True)
    gating = result.settings["bodypart_gating"]
    scorer = gating["scorer"]
    assert gating["used"] and scorer["kind"] == "bpreg-vgg16" and scorer["source"] == "model" and scorer["reliable"]
    lo, hi = scorer["score_range"]
    assert lo == pytest.approx(BOTTOM_SCORE, abs=1.5) and hi == pytest.approx(BOTTOM_SCORE + 0.1194 * 27 * 12, abs=1.5)
    assert scorer["slope_ratio"] == pytest.approx(1.0, abs=0.05)
    assert gating["windows"] == {UNGATED: [-40.0, 140.0], GATED: [31.0, 39.0]}
    # One preprocessing group: the encoder and UNGATED ran on every tile, GATED only on the tiles whose
    # slices score 31-39 (the upper middle of the scan).
    runs = result.settings["tiles_run"]
    assert result.settings["preprocessing_groups"] == 1 and gating["slabs"][0][:2] == [0, gating["slabs"][0][2]]
    assert runs["encoder"] == runs[UNGATED] == result.settings["tiles"]
    assert 0 < runs[GATED] < runs[UNGATED] and gating["skipped_tile_rows"] > 0
    labels = sitk.GetArrayViewFromImage(result.labels)
    gated_labels = {seg.catalog.by_name(n).label for n in seg.manifest.decoders[GATED].anatomies
                    if seg.manifest.anatomy_owner()[n] == GATED}
    rows = np.flatnonzero(np.isin(labels, list(gated_labels)).any(axis=(1, 2)))
    if rows.size:  # GATED labels only where its tiles ran: not in the lowest slices (scores 5-20)
        assert rows.min() > 0.2 * labels.shape[0]


def test_scans_it_cannot_score_run_ungated_with_a_warning(imported, scan) -> None:
    from clnet.inference import Segmenter

    coronal = sitk.PermuteAxes(scan[:, :, 8:18], [0, 2, 1])  # 120 mm of the body: few tiles
    result = Segmenter(imported, device="cpu").segment(coronal, force=True)
    gating = result.settings["bodypart_gating"]
    assert not gating["used"] and gating["scorer"]["problem"].startswith("its slices are not axial")
    assert any("every decoder ran on every tile" in w and "bpreg-vgg16" in w for w in result.warnings)


def test_random_weights_do_not_gate(tmp_path, scan) -> None:
    """Unfitted random weights give scores that do not rise along the body: not trusted, nothing gated."""
    from clnet.bodypart.bpreg_import import import_bpr as read

    folder = write_release_folder(tmp_path / "public_bpr_model", random_state_dict(seed=3))
    details = read(folder)[0].score_details(scan[:, :, ::3])
    assert not details.reliable


def test_without_a_release_body_part_model_the_bundled_one_scores(official_tree, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "plain"
    import_official(official_tree["root"], out, heads=[GATED])
    from clnet.checkpoint import read_manifest

    assert read_manifest(out).bodypart is None and "bodypart" not in json.loads((out / "manifest.json").read_text())


def test_settings_refuse_other_architectures(tmp_path) -> None:
    folder = write_release_folder(tmp_path / "public_bpr_model", random_state_dict(seed=4))
    (folder / "config.json").write_text(json.dumps({"base_model": "resnet"}))
    with pytest.raises(ModelError, match="resnet"):
        import_bpr(folder)


def test_cli_scores_with_a_model_folders_own_network(imported, scan, tmp_path, capsys) -> None:
    from clnet.cli import main

    path = tmp_path / "coronal.nii.gz"
    sitk.WriteImage(sitk.PermuteAxes(scan[:, :, 8:18], [0, 2, 1]), str(path))
    assert main(["bodypart", "score", str(path), "--model", str(imported), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scorer"] == "bpreg-vgg16" and out["problem"].startswith("its slices are not axial")
    assert not out["reliable"] and out["scores"] == [None] * 10
