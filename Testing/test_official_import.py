"""`clnet import-official` on a synthetic checkpoint tree with exactly the official layout.

No real weights are needed: the test writes random tensors under the official key names
(``encoder.``, ``decoder_dict.<HEAD>.``, ``ema_dict.<HEAD>.``, pruning ``weight_orig``/``weight_mask``),
nnU-Net v1 plans.json files and task folders, imports them, and checks the result against an
independent functional re-implementation of the official forward pass.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clnet.errors import ModelError
from clnet.official import import_official
from clnet.official.plans import head_anatomies, window_from_range

TRAINER = "clNetTrainerV2_SelectiveChannelDA_Continual_Decoding_Ensemble__clNetPlans"
POOL = [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3]] + [[3, 3, 3]] * 5
ENC_BASE = 4
# head → (task folder, fold folder, decoder base width, spacing, CT statistics)
HEADS = {
    "MERGED_HN3": ("Task902_HN_decoder3", "all", 4, [3.0, 3.0, 3.0], (-990.0, 1250.0, -180.0, 480.0)),
    "Chest_LNS": ("Task1008_Chest_LNS_15", "fold_0", 3, [4.0, 3.0, 3.0], (-1000.0, 900.0, -300.0, 400.0)),
}


# --------------------------------------------------------------------------- official-layout fakes
def _features(base: int) -> list[int]:
    return [min(base * 2**d, 320) for d in range(6)]


def _conv_block(sd: dict, prefix: str, cin: int, cout: int, k, gen: torch.Generator, pruned: bool) -> None:
    fan_in = cin * int(np.prod(k))
    w = torch.randn(cout, cin, *k, generator=gen) * (2.0 / fan_in) ** 0.5
    if pruned:
        sd[f"{prefix}.conv.weight_orig"] = w
        sd[f"{prefix}.conv.weight_mask"] = (torch.rand(w.shape, generator=gen) > 0.4).float()
    else:
        sd[f"{prefix}.conv.weight"] = w
    sd[f"{prefix}.conv.bias"] = 0.1 * torch.randn(cout, generator=gen)
    sd[f"{prefix}.instnorm.weight"] = 1.0 + 0.1 * torch.randn(cout, generator=gen)
    sd[f"{prefix}.instnorm.bias"] = 0.1 * torch.randn(cout, generator=gen)


def fake_encoder(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats, sd, cin = _features(ENC_BASE), {}, 1
    for d in range(6):
        prefixes = [f"conv_blocks_context.{d}.blocks.{i}" for i in range(2)] if d < 5 else [
            "conv_blocks_context.5.0.blocks.0", "conv_blocks_context.5.1.blocks.0"]
        for i, p in enumerate(prefixes):
            _conv_block(sd, p, cin if i == 0 else feats[d], feats[d], KERNELS[d], gen, pruned=False)
        cin = feats[d]
    return sd


def fake_decoder(seed: int, base: int, num_classes: int) -> dict[str, torch.Tensor]:
    """One head in the official layout, every conv / transposed conv pruning-re-parametrised."""
    gen = torch.Generator().manual_seed(seed)
    enc, dbnf = _features(ENC_BASE), [min(max(base * m, base), 320) for m in (1, 2, 4, 8, 16, 32)]
    sd: dict[str, torch.Tensor] = {}
    prev = enc[-1]
    for u in range(5):
        skip, out, k, pool = enc[-(2 + u)], dbnf[-(2 + u)], KERNELS[-(u + 1)], POOL[-(u + 1)]
        w = torch.randn(prev, out, *pool, generator=gen) * (1.0 / prev) ** 0.5
        sd[f"tu.{u}.weight_orig"] = w
        sd[f"tu.{u}.weight_mask"] = (torch.rand(w.shape, generator=gen) > 0.3).float()
        _conv_block(sd, f"conv_blocks_localization.{u}.0.blocks.0", out + skip, out, k, gen, pruned=True)
        _conv_block(sd, f"conv_blocks_localization.{u}.1.blocks.0", out, out, k, gen, pruned=True)
        s = torch.randn(num_classes, out, 1, 1, 1, generator=gen) * (1.0 / out) ** 0.5
        sd[f"seg_outputs.{u}.weight_orig"] = s
        sd[f"seg_outputs.{u}.weight_mask"] = (torch.rand(s.shape, generator=gen) > 0.2).float()
        prev = out
    return sd


# Whole channels the pruning masks leave without effect (the import drops them), per decoder level
# (u, first conv / upsampling / last conv):
DEAD_BETA = "conv_blocks_localization.0.0.blocks.0.instnorm.bias"


def kill_channels(sd: dict[str, torch.Tensor]) -> None:
    """Level 0, first conv: channels 0-2 get no input and β = 0 (output exactly 0), channel 3 gets no
    input but keeps β (a constant: must stay). Level 1 upsampling: outputs 0-1 have no weights. Level 2,
    last conv: channels 0-1 are read by nobody. Level 4: the final head ignores channel 0."""
    sd["conv_blocks_localization.0.0.blocks.0.conv.weight_mask"][0:4] = 0
    sd["tu.1.weight_mask"][:, 0:2] = 0
    sd["tu.3.weight_mask"][0:2] = 0
    sd["seg_outputs.4.weight_mask"][:, 0] = 0


def ema_of(raw: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An EMA copy: same masks, nearby (but different) values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v.clone() if k.endswith("_mask") else v + 0.3 * v.std() * torch.randn(v.shape, generator=gen)
            for k, v in raw.items()}


def fold(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith("_mask"):
            continue
        if k.endswith(".weight_orig"):
            out[k[: -len("_orig")]] = v * sd[k[: -len("_orig")] + "_mask"]
        else:
            out[k] = v
    return out


def plans_json(spacing, stats) -> dict:
    lo, hi, mean, sd = stats
    return {
        "num_modalities": 1, "normalization_schemes": {"0": "CT"}, "use_mask_for_norm": {"0": False},
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "conv_per_stage": 2, "num_classes": 3,
        "base_num_features": 32, "preprocessor_name": "GenericPreprocessor", "keep_only_largest_region": None,
        "plans_per_stage": {"0": {
            "batch_size": 2, "num_pool_per_axis": [4, 5, 5], "patch_size": [32, 64, 64],
            "median_patient_size_in_voxels": [100, 160, 160], "current_spacing": spacing,
            "original_spacing": spacing, "do_dummy_2D_data_aug": False,
            "pool_op_kernel_sizes": POOL, "conv_kernel_sizes": KERNELS,
        }},
        "dataset_properties": {"intensityproperties": {"0": {
            "median": 30.0, "mean": mean, "sd": sd, "mn": -1024.0, "mx": 3000.0,
            "percentile_99_5": hi, "percentile_00_5": lo}}},
    }


class Evil:
    """Unpickling this would create ``path`` (stands in for arbitrary code execution)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _task_dir(results: Path, task: str) -> Path:
    d = results / "clNet" / "3d_fullres" / task / TRAINER
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": OrderedDict(state), "epoch": 1000,
                "plot_stuff": ([0.9, 0.8], [np.float64(0.5)], [0.7]),  # nnU-Net logs hold NumPy numbers
                "prune_stuff": {"prune_ratios_final_for_each_decoder": {"x": 96.0}}}, path)


@pytest.fixture(scope="module")
def official_tree(tmp_path_factory) -> dict:
    """The synthetic official results/ tree and the weights official inference would use."""
    root = tmp_path_factory.mktemp("official") / "results"
    marker = root.parent / "pwned_sidecar"
    enc = fake_encoder(1)
    ge = {f"encoder.{k}": v for k, v in enc.items()}
    ge.update({f"ema_dict.general_encoder.{k}": v + 1 for k, v in enc.items()})  # never used at inference
    ge["decoder_dict.other.tu.0.weight"] = torch.zeros(1)
    d = _task_dir(root, "Task001_SuperGeneralEncoder")
    (d / "plans.json").write_text(json.dumps(plans_json([3.0, 3.0, 3.0], (-995, 1265, -187.8, 490.7))))
    _save(d / "all" / "model_final_checkpoint.model", ge)
    # An nnU-Net .model.pkl sidecar is never read: a malicious one must stay harmless.
    with open(d / "all" / "model_final_checkpoint.model.pkl", "wb") as f:
        pickle.dump(Evil(marker), f)

    expected: dict[str, dict[str, torch.Tensor]] = {}
    sparsity: dict[str, float] = {}
    other_enc = {f"encoder.{k}": v * 3 for k, v in fake_encoder(99).items()}  # stale copy: must be ignored
    for n, (head, (task, fold_dir, base, spacing, stats)) in enumerate(HEADS.items()):
        k = len(head_anatomies(head))
        raw = fake_decoder(10 + n, base, k + 1)
        if head == "MERGED_HN3":
            kill_channels(raw)
        ema = ema_of(raw, 20 + n)
        for sd in (raw, ema):
            if head == "MERGED_HN3":
                sd[DEAD_BETA][0:3] = 0
        if head == "Chest_LNS":  # official fallback: an EMA conv weight rounding to zero → raw weights
            ema["conv_blocks_localization.2.0.blocks.0.conv.weight_orig"] *= 1e-4
            used = raw
        else:
            used = ema
        expected[head] = fold(used)
        masks = [v for kk, v in used.items() if kk.endswith("_mask")]
        sparsity[head] = float(sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks))
        state = dict(other_enc)
        state.update({f"decoder_dict.{head}.{kk}": v for kk, v in raw.items()})
        state.update({f"ema_dict.{head}.{kk}": v for kk, v in ema.items()})
        if head == "Chest_LNS":  # a decoder task also carries older heads: not taken from here
            state.update({f"decoder_dict.MERGED_HN3.{kk}": v * 2 for kk, v in raw.items()
                          if kk.startswith("tu.")})
        td = _task_dir(root, task)
        (td / "plans.json").write_text(json.dumps(plans_json(spacing, stats)))
        _save(td / fold_dir / "model_final_checkpoint.model", state)
    return {"root": root, "encoder": enc, "decoders": expected, "sparsity": sparsity, "marker": marker}


@pytest.fixture(scope="module")
def imported(official_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "clnet-official"
    import_official(official_tree["root"], out, name="official-test")
    return out


# --------------------------------------------------------------------------- reference forward
def _block(x, sd, prefix, stride, nonlin=True):
    w = sd[f"{prefix}.conv.weight"]
    pad = tuple(1 if s == 3 else 0 for s in w.shape[2:])  # nnU-Net v1 padding rule
    x = F.conv3d(x, w, sd[f"{prefix}.conv.bias"], stride=tuple(stride), padding=pad)
    x = F.instance_norm(x, weight=sd[f"{prefix}.instnorm.weight"], bias=sd[f"{prefix}.instnorm.bias"], eps=1e-5)
    return F.leaky_relu(x, 0.01) if nonlin else x


def _crop(x, shape):
    starts = [(a - b) // 2 for a, b in zip(x.shape[2:], shape)]
    return x[:, :, starts[0]:starts[0] + shape[0], starts[1]:starts[1] + shape[1], starts[2]:starts[2] + shape[2]]


def reference_forward(enc: dict, dec: dict, x: torch.Tensor) -> torch.Tensor:
    """The official computation, written from the layer description with torch.nn.functional only."""
    skips = []
    for d in range(5):
        x = _block(x, enc, f"conv_blocks_context.{d}.blocks.0", [1, 1, 1] if d == 0 else POOL[d - 1])
        x = _block(x, enc, f"conv_blocks_context.{d}.blocks.1", [1, 1, 1])
        skips.append(x)
    x = _block(x, enc, "conv_blocks_context.5.0.blocks.0", POOL[4])
    x = _block(x, enc, "conv_blocks_context.5.1.blocks.0", [1, 1, 1])
    for u in range(5):
        pool = POOL[-(u + 1)]
        x = F.conv_transpose3d(x, dec[f"tu.{u}.weight"], stride=tuple(pool))
        skip = skips[-(u + 1)]
        common = [min(a, b) for a, b in zip(x.shape[2:], skip.shape[2:])]
        x = torch.cat([_crop(x, common), _crop(skip, common)], dim=1)  # [upsampled, skip]
        x = _block(x, dec, f"conv_blocks_localization.{u}.0.blocks.0", [1, 1, 1])
        x = _block(x, dec, f"conv_blocks_localization.{u}.1.blocks.0", [1, 1, 1], nonlin=False)
    return F.conv3d(x, dec["seg_outputs.4.weight"])


# --------------------------------------------------------------------------- tests
def test_every_tensor_maps_and_manifest(official_tree, imported):
    from clnet.checkpoint import read_manifest
    from clnet.official import VARIANT
    from safetensors.torch import load_file

    m = read_manifest(imported)
    assert m.variant == VARIANT and m.demo is False and m.clinical_use is False
    assert "official CL-Net release" in m.provenance["weights"]
    assert len(m.provenance["checkpoints"]) == 3 and all(len(c["sha256"]) == 64 for c in m.provenance["checkpoints"])
    assert m.extra["official"]["pad_value"] == 0.0 and m.extra["official"]["per_decoder_preprocessing"] is True
    assert list(m.decoders) == list(HEADS)
    enc = load_file(str(imported / m.encoder_file))
    assert len(enc) == len(official_tree["encoder"])  # nothing missing or extra
    for head, (task, _fold, _base, spacing, stats) in HEADS.items():
        e = m.decoders[head]
        tensors = load_file(str(imported / e.file))
        assert len(tensors) == len(official_tree["decoders"][head])
        assert e.anatomies[0] == head_anatomies(head)[0] and len(e.anatomies) == e.config.num_classes - 1
        assert e.info["official_task"] == task
        assert e.info["weights"].startswith("ema_dict" if head == "MERGED_HN3" else "decoder_dict")
        assert e.info["pruning"]["sparsity"] == pytest.approx(official_tree["sparsity"][head], abs=1e-6)
        prep = e.info["preprocessing"]
        assert prep["spacing_zyx"] == spacing and prep["overlap"] == pytest.approx(0.2)
        assert prep["normalization"] == {"clip_low": stats[0], "clip_high": stats[1], "mean": stats[2], "std": stats[3]}
        assert e.bodypart_range is not None  # the official windows (no config given)
        # Each anatomy's own window from the packaged per-class statistics, inside the head's.
        assert set(e.anatomy_bodypart_ranges) == set(e.anatomies)
        assert "packaged" in e.info["anatomy_bodypart_ranges_source"]
        lo, hi = e.window_for(e.anatomies[:1])
        assert e.bodypart_range[0] <= lo < hi <= e.bodypart_range[1]
        assert hi - lo < e.bodypart_range[1] - e.bodypart_range[0]


def test_forward_matches_official_reference(official_tree, imported):
    from clnet.checkpoint import load_model

    net = load_model(imported).network
    enc = official_tree["encoder"]
    torch.manual_seed(0)
    for shape in [(1, 1, 32, 64, 64), (1, 1, 20, 40, 36)]:  # the second one exercises the centre crop
        x = torch.randn(shape)
        with torch.no_grad():
            ours = net(x)
            for head, dec in official_tree["decoders"].items():
                ref = reference_forward(enc, dec, x)
                diff = float((ours[head] - ref).abs().max())
                print(f"max |logit diff| {head} {tuple(shape)}: {diff:.3g}")
                assert ours[head].shape == ref.shape
                assert diff <= 1e-4


def test_dead_channels_are_dropped(official_tree, imported, tmp_path):
    """Channels the masks left without effect are cut out (the forward test above shows the output is
    unchanged); a constant channel stays; --keep-dead-channels keeps the dense layout."""
    from clnet.checkpoint import read_manifest

    m = read_manifest(imported)
    hn3 = m.decoders["MERGED_HN3"]
    assert hn3.config.channels == ((64, 61, 64), (30, 32, 32), (16, 16, 14), (8, 8, 8), (4, 4, 3))
    shrink = hn3.info["shrink"]
    assert shrink["channels_before"] - shrink["channels_after"] == 3 + 2 + 2 + 1
    assert shrink["parameters_after"] < shrink["parameters_before"] and shrink["constant_kept"] == 1
    lns = m.decoders["Chest_LNS"].info["shrink"]  # random 60-70 % masks leave no channel dead
    assert lns["channels_before"] == lns["channels_after"] and lns["constant_kept"] == 0

    out = tmp_path / "dense"
    import_official(official_tree["root"], out, heads=["MERGED_HN3"], shrink=False)
    dense = read_manifest(out).decoders["MERGED_HN3"]
    assert dense.config.channels[0] == (64, 64, 64) and "shrink" not in dense.info


def test_sidecar_pickle_is_never_read(official_tree, imported):
    assert not official_tree["marker"].exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_checkpoint_is_refused(official_tree, tmp_path, how):
    tree = tmp_path / "results"
    shutil.copytree(official_tree["root"], tree)
    marker = tmp_path / "pwned"
    ckpt = next((tree / "clNet" / "3d_fullres" / "Task902_HN_decoder3").rglob("model_final_checkpoint.model"))
    payload = {"state_dict": {"encoder.x": torch.zeros(1)}, "hook": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, ckpt)
        # A static scan (nothing executed) confirms the file really references a callable.
        assert any(g.endswith(".open") for g in torch.serialization.get_unsafe_globals_in_checkpoint(ckpt))
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ModelError) as err:
        import_official(tree, tmp_path / "out")
    assert "model_final_checkpoint.model" in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_leftover_tensor_is_named(official_tree, tmp_path):
    tree = tmp_path / "results"
    shutil.copytree(official_tree["root"], tree)
    ckpt = next((tree / "clNet" / "3d_fullres" / "Task902_HN_decoder3").rglob("model_final_checkpoint.model"))
    sd = torch.load(ckpt, weights_only=False)["state_dict"]  # our own test file
    for copy in ("decoder_dict", "ema_dict"):
        sd[f"{copy}.MERGED_HN3.conv_blocks_localization.0.0.blocks.0.dropout.weight"] = torch.ones(2)
        del sd[f"{copy}.MERGED_HN3.seg_outputs.1.weight_orig"], sd[f"{copy}.MERGED_HN3.seg_outputs.1.weight_mask"]
    torch.save({"state_dict": sd}, ckpt)
    with pytest.raises(ModelError) as err:
        import_official(tree, tmp_path / "out", heads=["MERGED_HN3"])
    msg = str(err.value)
    assert "left over" in msg and "dropout.weight" in msg and "seg_outputs.1.weight" in msg
    # EMA and raw copies that disagree are reported too, not silently swapped.
    del sd["ema_dict.MERGED_HN3.tu.0.weight_orig"], sd["ema_dict.MERGED_HN3.tu.0.weight_mask"]
    torch.save({"state_dict": sd}, ckpt)
    with pytest.raises(ModelError, match="tu.0.weight"):
        import_official(tree, tmp_path / "out", heads=["MERGED_HN3"])


def test_config_json_sets_patch_and_windows(official_tree, tmp_path):
    from clnet.checkpoint import read_manifest

    rng = {"percentile_00_5": 62.9, "percentile_99_5": 104.8, "min": -10.5, "max": 112.1, "mean": 28.4, "std": 10.6}
    cfg = {"clnet_general_encoder": "GeneralEncoder",
           "GeneralEncoder": {"task": "Task001_SuperGeneralEncoder", "fold": "all", "load_only_encoder": True}}
    for head, (task, fold_dir, *_rest) in HEADS.items():
        cfg[head + "_task"] = {
            "task": task, "fold": "all" if fold_dir == "all" else 0, "decoders": {head: f"1-{len(head_anatomies(head))}"},
            "model_training_setup": {"patch_size": {"all": [32, 64, 64]}},
            "bpr_range_for_decoders": {head: rng},
        }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "m"
    import_official(path, out, results=official_tree["root"], heads=["MERGED_HN3"])
    m = read_manifest(out)
    assert list(m.decoders) == ["MERGED_HN3"]
    assert m.preprocessing.patch_size_zyx == (32, 64, 64)
    lo, hi = m.decoders["MERGED_HN3"].bodypart_range
    assert (lo, hi) == pytest.approx(window_from_range("MERGED_HN3", rng))
    assert lo == pytest.approx(62.9 - 0.25 * 28.4)


def test_cli(official_tree, tmp_path, capsys):
    from clnet.checkpoint import verify_model
    from clnet.cli import main

    out = tmp_path / "cli-model"
    assert main(["import-official", str(official_tree["root"]), "-o", str(out), "--heads", "Chest_LNS", "-q"]) == 0
    assert "Chest_LNS" in capsys.readouterr().out
    assert list(verify_model(out).decoders) == ["Chest_LNS"]
    assert main(["import-official", str(official_tree["root"]), "-o", str(out), "-q"]) == 2  # exists: no overwrite


def test_end_to_end_segmenter(official_tree, ct_crop, tmp_path):
    import SimpleITK as sitk
    from clnet.catalog import load_catalog
    from clnet.inference import Segmenter

    # The official patch (112, 96, 128) would work too; a config keeps the CPU run short.
    cfg = {"GeneralEncoder": {"task": "Task001_SuperGeneralEncoder", "type": "GeneralEncoder"}}
    for head, (task, fold_dir, *_rest) in HEADS.items():
        cfg[head] = {"task": task, "fold": "all" if fold_dir == "all" else 0,
                     "decoders": {head: f"1-{len(head_anatomies(head))}"},
                     "model_training_setup": {"patch_size": {"all": [32, 64, 64]}}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "model"
    import_official(official_tree["root"], out, config=tmp_path / "cfg.json")

    img = sitk.ReadImage(str(ct_crop))  # the real CT, cropped to 64×56×40
    result = Segmenter(out, device="cpu").segment(img, force=True)
    lab = result.labels
    assert lab.GetSize() == img.GetSize()
    assert lab.GetSpacing() == pytest.approx(img.GetSpacing())
    assert lab.GetOrigin() == pytest.approx(img.GetOrigin())
    assert lab.GetDirection() == pytest.approx(img.GetDirection())
    catalog = load_catalog()
    allowed = {catalog.by_name(n).label for h in HEADS for n in head_anatomies(h)}
    values = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist()) - {0}
    assert values and values <= allowed
