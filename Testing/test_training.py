"""Training: partial-label loss, EMA, resume, datasets, real-CT smoke training, add-decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clnet.checkpoint import load_model, save_model, sha256_file
from clnet.manifest import Normalization, Preprocessing
from clnet.model import CLNet
from clnet.model.factory import build_manifest, tiny_encoder
from clnet.training.common import decoder_config, pad_value
from clnet.training.datasets import PreparedCase, catalog_labels, load_dataset, prepare_cases
from clnet.training.ema import EMA
from clnet.training.losses import partial_dice_ce
from clnet.training.synthetic import write_synthetic_dataset
from clnet.training.trainer import TrainConfig, fit
from clnet.training.transforms import AugmentConfig, PatchSampler

REPO = Path(__file__).resolve().parents[1]
PREP = Preprocessing(spacing_zyx=(3.0, 3.0, 3.0), patch_size_zyx=(16, 32, 32),
                     normalization=Normalization(-1000.0, 1000.0, 0.0, 300.0))
NO_AUG = AugmentConfig(affine_prob=0.0, intensity_prob=0.0)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=1, patch_size_zyx=(16, 32, 32), warmup_steps=1, lr=3e-3, ema_decay=0.9,
                augment=NO_AUG, checkpoint_every=1, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------ loss


def test_partial_label_loss_ignores_unlabelled_anatomy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 5, 6)
    target = torch.randint(0, 2, (1, 4, 5, 6))  # classes 0 and 1 only: class 2 is never a target here
    unknown2 = torch.tensor([[True, True, False]])
    # Move mass between background and the unlabelled class 2: the scan cannot tell them apart.
    swapped = logits.clone()
    swapped[:, [0, 2]] = logits[:, [2, 0]]
    a = partial_dice_ce(logits, target, unknown2)
    b = partial_dice_ce(swapped, target, unknown2)
    assert torch.allclose(a, b, atol=1e-6)
    # Predicting class 2 everywhere on background voxels costs nothing when it is unknown...
    confident2 = torch.where(target[:, None] == 0, torch.tensor([-5.0, -5.0, 8.0])[None, :, None, None, None],
                             torch.tensor([-5.0, 8.0, -5.0])[None, :, None, None, None])
    assert float(partial_dice_ce(confident2, target, unknown2)) < 0.05
    # ...but is punished when the scan labels class 2 (then those voxels truly are background).
    assert float(partial_dice_ce(confident2, target, torch.tensor([[True, True, True]]))) > 1.0


def test_partial_label_loss_gradient_is_zero_for_unknown_only_mass() -> None:
    logits = torch.zeros(1, 3, 2, 2, 2, requires_grad=True)
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    loss = partial_dice_ce(logits, target, torch.tensor([[True, False, False]]), dice_weight=0.0)
    loss.backward()
    # All classes are bg-or-unknown: the merged probability is 1 whatever the logits → no gradient.
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(logits.grad, torch.zeros_like(logits.grad), atol=1e-7)


# ------------------------------------------------------------------------------------------ EMA


@pytest.mark.parametrize("labels_dtype", [np.uint8, np.uint16])
def test_foreground_patches_contain_the_anatomy_wherever_it_is(labels_dtype) -> None:
    # A small organ far from the first slices: every foreground patch must hold it. (The indices
    # once came from a (y, x) projection and all foreground patches landed in the first slices.)
    image = np.zeros((40, 24, 20), np.float32)
    labels = np.zeros(image.shape, labels_dtype)
    labels[30:34, 3:6, 14:17] = 1000 if labels_dtype == np.uint16 else 82
    image[labels > 0] = 1.0
    lab = int(labels.max())
    sampler = PatchSampler([PreparedCase("c", image, labels, frozenset({lab}))], [lab], (8, 8, 8), 0.0,
                           fg_fraction=1.0, augment=AugmentConfig(affine_prob=0, intensity_prob=0))
    for step in range(10):
        x, y, _ = sampler.sample(step, 2)
        assert ((y == lab).flatten(1).any(1)).all()
        assert torch.equal(x[:, 0] > 0.5, y == lab)  # image and labels stay aligned


def test_ema_update_math() -> None:
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.5)
    shadow = 1.0
    for n, value in enumerate([3.0, -1.0, 5.0, 2.0]):
        with torch.no_grad():
            m.weight.fill_(value)
        d = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(m)
        shadow = d * shadow + (1 - d) * value
        assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), shadow))
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.allclose(target.weight, torch.full((1, 2), shadow))


# ------------------------------------------------------------------------------------------ data + resume


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_cases=2)


def _tiny_network(seed: int = 0) -> tuple[CLNet, dict[str, list[int]]]:
    enc = tiny_encoder()
    torch.manual_seed(seed)
    net = CLNet(enc, {"organs": decoder_config(enc, 3, 1.0, min_width=4)})
    return net, {"organs": catalog_labels(["Liver", "Spleen"])}


def test_nnunet_dataset_maps_names_to_catalog(synthetic: Path) -> None:
    specs = load_dataset(synthetic)
    assert len(specs) == 2
    assert set(specs[0].label_map.values()) == {"Liver", "Spleen", "Kidney_L", "A_Aorta_Descending"}
    cases = prepare_cases(specs, PREP)
    liver = catalog_labels(["Liver"])[0]
    assert (cases[0].labels == liver).sum() > 50
    lut, known = cases[0].targets(catalog_labels(["Liver", "Pancreas"]))
    assert known.tolist() == [True, True, False]  # the dataset does not label the pancreas


def test_csv_dataset_with_label_map(tmp_path: Path, synthetic: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"1": "liver", "2": "spleen", "9": "not_an_organ"}))
    (tmp_path / "d.csv").write_text(
        f"image,label,label_map\n{synthetic}/imagesTr/case000_0000.nii.gz,{synthetic}/labelsTr/case000.nii.gz,map.json\n")
    (spec,) = load_dataset(tmp_path / "d.csv")
    assert spec.label_map == {1: "Liver", 2: "Spleen"} and spec.ignored_names == ["not_an_organ"]


def test_resume_gives_identical_state(tmp_path: Path, synthetic: Path) -> None:
    cases = prepare_cases(load_dataset(synthetic), PREP)
    pad = pad_value(PREP)
    net_a, heads = _tiny_network()
    fit(net_a, heads, cases, _cfg(), pad, True, torch.device("cpu"), work_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop_at_2(step: int, _loss: float) -> None:
        if step == 2:
            raise Stop

    net_b, _ = _tiny_network()
    with pytest.raises(Stop):
        fit(net_b, heads, cases, _cfg(), pad, True, torch.device("cpu"), work_dir=tmp_path / "b", progress=False,
            on_step=stop_at_2)
    net_c, _ = _tiny_network(seed=123)  # different init: everything must come from the checkpoint
    fit(net_c, heads, cases, _cfg(), pad, True, torch.device("cpu"), work_dir=tmp_path / "b", progress=False)
    sa, sc = net_a.state_dict(), net_c.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (tmp_path / "b" / "checkpoint" / "checkpoint.safetensors").is_file()
    assert not list((tmp_path / "b").rglob("*.pt")) and not list((tmp_path / "b").rglob("*.pkl"))


# ------------------------------------------------------------------------------------------ real CT


def test_loss_goes_down_on_real_ct_crop(shared_data: Path) -> None:
    from clnet.training.datasets import CaseSpec, prepare_case

    label_map = {int(k): v for k, v in json.loads((shared_data / "labels.json").read_text()).items()}
    from clnet.catalog import load_catalog

    cat = load_catalog()
    mapping = {k: cat.get(v).name for k, v in label_map.items() if cat.get(v) is not None}
    spec = CaseSpec("ct", shared_data / "example_ct.nii.gz", shared_data / "example_seg_fast_force_split.nii.gz",
                    mapping)
    prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(16, 32, 32),
                         normalization=Normalization(-1000.0, 1000.0, 0.0, 300.0))
    case = prepare_case(spec, prep)
    # A small crop around the liver keeps the test quick.
    z = np.nonzero(case.labels == cat.by_name("Liver").label)[0]
    zc = int(np.median(z))
    case.image, case.labels = case.image[zc - 8: zc + 8], case.labels[zc - 8: zc + 8]
    net, _ = _tiny_network()
    heads = {"organs": catalog_labels(["Liver", "Spleen"])}
    losses: list[float] = []
    fit(net, heads, [case], _cfg(steps=40, lr=1e-2, fg_fraction=1.0, ema_decay=0.0, warmup_steps=2), pad_value(prep),
        True, torch.device("cpu"), progress=False, on_step=lambda s, v: losses.append(v))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


# ------------------------------------------------------------------------------------------ add-decoder


def test_add_decoder_keeps_old_files_and_outputs_identical(tmp_path: Path, synthetic: Path) -> None:
    from clnet.training.add_decoder import add_decoder

    enc = tiny_encoder()
    manifest = build_manifest("base", enc, {"organs": ["Liver", "Spleen"]}, PREP)
    for e in manifest.decoders.values():
        e.config = decoder_config(enc, 3, 1.0, min_width=4)
    torch.manual_seed(0)
    net = CLNet(enc, {n: e.config for n, e in manifest.decoders.items()})
    save_model(net, manifest, tmp_path / "base")
    old_files = {p.name: sha256_file(p) for p in (tmp_path / "base").glob("*.safetensors")}
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        before = load_model(tmp_path / "base").network(x)["organs"]

    add_decoder(tmp_path / "base", "kidney", synthetic, ["kidney_left", "aorta"], tmp_path / "new", _cfg(steps=3),
                width_scale=1.0, progress=False, evaluate=False)
    for name, digest in old_files.items():
        assert sha256_file(tmp_path / "new" / name) == digest
    new = load_model(tmp_path / "new")
    assert list(new.manifest.decoders) == ["organs", "kidney"]
    assert new.manifest.decoders["kidney"].anatomies == ["Kidney_L", "A_Aorta_Descending"]
    with torch.inference_mode():
        after = new.network(x)
    assert torch.equal(after["organs"], before)
    assert after["kidney"].shape == (1, 3, 16, 32, 32)


def test_cli_train_writes_demo_flagged_model(tmp_path: Path, synthetic: Path) -> None:
    from clnet.cli import main

    rc = main(["train", "--data", str(synthetic), "--decoder", "organs=liver,spleen", "-o", str(tmp_path / "m"),
               "--encoder", "tiny", "--spacing", "3", "3", "3", "--patch", "16", "32", "32", "--steps", "2",
               "--batch-size", "1", "--no-eval", "-q", "--seed", "7"])
    assert rc == 0
    m = load_model(tmp_path / "m").manifest
    assert m.demo is True and m.clinical_use is False
    assert m.provenance["steps"] == 2 and m.provenance["seed"] == 7 and "command" in m.provenance
    assert (tmp_path / "m.work" / "train_log.csv").is_file()
    assert main(["train", "--data", str(synthetic), "--decoder", "x=liver", "-o", str(tmp_path / "bad"),
                 "--encoder", "tiny", "--patch", "15", "32", "32", "-q"]) != 0


def test_bundled_demo_model_is_flagged_demo() -> None:
    demo = REPO / "CLNetSegmentation" / "clnet" / "models" / "demo"
    if not (demo / "manifest.json").is_file():
        pytest.skip("no bundled demo model")
    loaded = load_model(demo)
    m = loaded.manifest
    assert m.demo is True and m.clinical_use is False
    assert len(m.decoders) >= 3
    assert "not" in (demo / "README.md").read_text().lower()
    assert sum(p.stat().st_size for p in demo.iterdir()) < 10 * 1024 * 1024
