"""Teaching a model a new, user-defined anatomy from (image, seg.nrrd, segment) pairs (issue 19, engine).

The "painted" segment is the bone (HU > 200) of the real example CT, next to a second segment (fat),
so picking the segment by name matters. The base model is the tiny random model; its frozen random
encoder and 40 CPU steps teach the new decoder only roughly, so the Dice bar is low (chance ≈ 0.04).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.catalog import Anatomy
from clnet.checkpoint import sha256_file
from clnet.errors import ClnetError, ModelError
from clnet.manifest import Manifest
from clnet.training.pairs import segment_mask
from clnet.training.trainer import TrainConfig
from clnet.training.transforms import AugmentConfig

NEW = "Painted spine"
PAINTED = "Painted bone"


def _segment(label: int, name: str) -> Anatomy:
    return Anatomy(label, name.replace(" ", "_"), name, "test", None, (200, 100, 50), None)


@pytest.fixture(scope="module")
def painted(example_ct: Path, tmp_path_factory) -> Path:
    """A two-segment .seg.nrrd on the real CT's grid: bone and fat."""
    from clnet.io.seg_nrrd import write_seg_nrrd

    img = sitk.ReadImage(str(example_ct))
    hu = sitk.GetArrayFromImage(img)
    lab = np.zeros(hu.shape, np.uint8)
    lab[hu > 200] = 1
    lab[(hu > -150) & (hu < -50)] = 2
    image = sitk.GetImageFromArray(lab)
    image.CopyInformation(img)
    path = tmp_path_factory.mktemp("painted") / "painted.seg.nrrd"
    write_seg_nrrd(image, [_segment(1, PAINTED), _segment(2, "Fat")], path)
    return path


@pytest.fixture(scope="module")
def learned(tiny_model_dir: Path, example_ct: Path, painted: Path, tmp_path_factory) -> Path:
    from clnet.training.add_decoder import NewAnatomy, add_decoder

    out = tmp_path_factory.mktemp("learned") / "model"
    cfg = TrainConfig(steps=40, batch_size=2, patch_size_zyx=(16, 32, 32), warmup_steps=2, lr=3e-2,
                      ema_decay=0.0, augment=AugmentConfig(affine_prob=0.0, intensity_prob=0.0),
                      checkpoint_every=1000, fg_fraction=0.9)
    add_decoder(tiny_model_dir, "mine", None, [], out, cfg, width_scale=0.5, progress=False, evaluate=False,
                pairs=[(str(example_ct), str(painted), PAINTED)],
                new_anatomy=NewAnatomy(NEW, (10, 200, 30), "SCT^421060004^Spinal bone"))
    return out


def test_pair_mask_picks_segment_by_name_or_id(painted: Path) -> None:
    by_name = sitk.GetArrayFromImage(segment_mask(painted, PAINTED))
    by_id = sitk.GetArrayFromImage(segment_mask(painted, "Painted_bone"))
    fat = sitk.GetArrayFromImage(segment_mask(painted, "Fat"))
    assert by_name.any() and fat.any()
    assert np.array_equal(by_name, by_id)
    assert not np.logical_and(by_name, fat).any()


def test_pair_mask_reads_multi_layer_seg_nrrd(tmp_path: Path) -> None:
    nrrd = pytest.importorskip("nrrd")
    data = np.zeros((2, 6, 7, 8), np.uint8)
    data[0, 1:3, 1:3, 1:3] = 1  # layer 0, value 1: segment A
    data[1, 2:5, 2:5, 2:5] = 1  # layer 1, value 1: segment B (overlaps A: why Slicer made a 2nd layer)
    header = {"kinds": ["list", "domain", "domain", "domain"], "space": "left-posterior-superior",
              "space directions": np.array([[np.nan] * 3, [2, 0, 0], [0, 2, 0], [0, 0, 3]], dtype=float),
              "space origin": [5.0, 6.0, 7.0], "Segment0_ID": "a", "Segment0_Name": "A", "Segment0_Layer": "0",
              "Segment0_LabelValue": "1", "Segment1_ID": "b", "Segment1_Name": "B", "Segment1_Layer": "1",
              "Segment1_LabelValue": "1"}
    path = tmp_path / "layers.seg.nrrd"
    nrrd.write(str(path), data, header)
    b = segment_mask(path, "B")
    assert b.GetSpacing() == (2.0, 2.0, 3.0) and b.GetOrigin() == (5.0, 6.0, 7.0)
    assert np.array_equal(sitk.GetArrayFromImage(b), data[1].transpose(2, 1, 0))
    assert int(sitk.GetArrayFromImage(segment_mask(path, "a")).sum()) == 8


def test_pair_mask_from_label_map_value(tmp_path: Path) -> None:
    arr = np.zeros((4, 5, 6), np.uint16)
    arr[1:3, 1:3, 1:3] = 7
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert int(sitk.GetArrayFromImage(segment_mask(path, "7")).sum()) == 8
    with pytest.raises(ClnetError, match="is empty"):
        segment_mask(path, "3")
    with pytest.raises(ClnetError, match="not a label value"):
        segment_mask(path, "Liver")


def test_unknown_segment_lists_the_segments_present(painted: Path) -> None:
    with pytest.raises(ClnetError) as err:
        segment_mask(painted, "Spleen")
    assert "'Painted bone'" in str(err.value) and "'Fat'" in str(err.value) and "Spleen" in str(err.value)


def test_learned_model_keeps_old_files_and_owns_the_new_anatomy(learned: Path, tiny_model_dir: Path,
                                                                 example_ct: Path, painted: Path) -> None:
    from clnet.checkpoint import load_model

    for old in tiny_model_dir.glob("*.safetensors"):
        assert sha256_file(learned / old.name) == sha256_file(old)
    manifest = load_model(learned).manifest
    [user] = manifest.user_anatomies
    assert user["name"] == NEW and user["label"] >= 1000 and user["decoder"] == "mine"
    assert user["color"] == [10, 200, 30] and user["code"] == ["SCT", "421060004", "Spinal bone"]
    assert manifest.decoders["mine"].anatomies == [NEW]
    window = manifest.decoders["mine"].bodypart_range  # around the painted slices (painted_window)
    assert window is not None and manifest.decoders["mine"].anatomy_bodypart_ranges == {NEW: window}
    # Format 2 only where a format-1 reader would silently misread the model (its user anatomy).
    assert json.loads((learned / "manifest.json").read_text())["format_version"] == 2
    assert json.loads((tiny_model_dir / "manifest.json").read_text())["format_version"] == 1
    future = json.loads((learned / "manifest.json").read_text()) | {"format_version": 3}
    with pytest.raises(ModelError, match="newer than this clnet"):
        Manifest.from_dict(future)
    [pair] = manifest.decoders["mine"].info["training_pairs"]
    assert pair == {"image": example_ct.name, "image_sha256": sha256_file(example_ct),
                    "segmentation": painted.name, "segmentation_sha256": sha256_file(painted), "segment": PAINTED}


def test_anatomies_cli_lists_my_anatomies(learned: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "clnet", "anatomies", "--model", str(learned)],
                         capture_output=True, text=True, check=True).stdout
    first = out.split("\nMy anatomies\n", 1)[1].splitlines()[0].split()
    assert first[:3] == ["*", "1000", NEW.split()[0]] and NEW in " ".join(first)


def test_segmenting_with_the_learned_model_writes_the_new_label(learned: Path, example_ct: Path,
                                                                tmp_path: Path) -> None:
    from clnet import Segmenter
    from clnet.io.read import read_image
    from clnet.outputs import save_result

    seg = Segmenter(learned, device="cpu")
    source = read_image(example_ct)
    result = seg.segment(source, anatomies=[NEW.lower()])
    written = save_result(result, tmp_path, source, formats=("seg.nrrd",))
    labels = json.loads(written["json"].read_text())["labels"]
    assert list(labels) == ["1000"] and labels["1000"]["name"] == NEW and labels["1000"]["present"]
    assert labels["1000"]["region"] == "My anatomies" and labels["1000"]["color"] == [10, 200, 30]
    arr = sitk.GetArrayFromImage(result.labels)
    assert arr.dtype == np.uint16 and set(np.unique(arr)) == {0, 1000}
    bone = sitk.GetArrayFromImage(source.image) > 200  # what was painted; predicting all of it: Dice 0.04
    found = arr == 1000
    assert 2 * (found & bone).sum() / (found.sum() + bone.sum()) > 0.1
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written["seg.nrrd"]))
    reader.ReadImageInformation()
    header = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert header["Segment0_Name"] == NEW and header["Segment0_LabelValue"] == "1000"
    assert header["Segment0_Color"].split() == [f"{c / 255:.6g}" for c in (10, 200, 30)]
    assert "421060004" in header["Segment0_Tags"]


# ------------------------------------------------------------------ the job: CLI contract, corrections

TRAIN_FROM = 40  # training slab: z 40..111 of the example CT; held-out slab: z 0..39 (never trained on)


def _slab(path: Path, z0: int, z1: int, out: Path) -> Path:
    img = sitk.ReadImage(str(path))
    sitk.WriteImage(img[:, :, z0:z1], str(out), True)
    return out


@pytest.fixture(scope="module")
def slabs(example_ct: Path, painted: Path, tmp_path_factory) -> dict[str, Path]:
    """Training and held-out crops of the real CT with their painted seg.nrrd (bone, fat)."""
    from clnet.io.seg_nrrd import write_seg_nrrd

    d = tmp_path_factory.mktemp("slabs")
    depth = sitk.ReadImage(str(example_ct)).GetSize()[2]
    out = {}
    for part, (z0, z1) in {"train": (TRAIN_FROM, depth), "held": (0, TRAIN_FROM)}.items():
        out[f"{part}_ct"] = _slab(example_ct, z0, z1, d / f"{part}_ct.nii.gz")
        lab = sitk.ReadImage(str(painted))[:, :, z0:z1]
        out[f"{part}_seg"] = d / f"{part}.seg.nrrd"
        write_seg_nrrd(lab, [_segment(1, PAINTED), _segment(2, "Fat")], out[f"{part}_seg"])
    return out


FAST = ["--steps", "3", "--patch", "16", "32", "32", "--warmup", "1", "--lr", "3e-2", "--ema-decay", "0",
        "--checkpoint-every", "1000", "--batch-size", "1"]


def _run_json(args: list[str], home: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    import os

    env = {**os.environ, "CLNET_HOME": str(home)}
    env.pop("CLNET_MODEL", None)
    proc = subprocess.run([sys.executable, "-m", "clnet", "add-decoder", *args, "--progress", "json"],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc, [json.loads(ln) for ln in lines]  # every stdout line must be an event


@pytest.fixture(scope="module")
def installed(tiny_model_dir: Path, slabs: dict[str, Path], tmp_path_factory) -> tuple[Path, list[dict]]:
    home = tmp_path_factory.mktemp("home")
    proc, events = _run_json(["--model", str(tiny_model_dir), "--new-anatomy", NEW,
                              "--pair", str(slabs["train_ct"]), str(slabs["train_seg"]), PAINTED,
                              "--validate", str(slabs["held_ct"]), str(slabs["held_seg"]), PAINTED,
                              "--install", "tiny-v2", "--set-default", *FAST], home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home, events


def test_progress_json_event_stream(installed: tuple[Path, list[dict]]) -> None:
    home, events = installed
    assert events[0] == {"event": "hello", "protocol": "clnet-events/1", "command": "add-decoder"}
    train = [e for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3] and all(e["steps"] == 3 for e in train)
    assert all(np.isfinite(e["loss"]) and e["eta_s"] >= 0 for e in train) and train[-1]["fraction"] == 1.0
    val = [e for e in events if e["event"] == "progress" and e["stage"] == "validate"]
    assert len(val) >= 2 and val[-1]["fraction"] == 1.0 and all(0 <= e["validation_dice"] <= 1 for e in val)
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages.index("prepare") < stages.index("train") < stages.index("verify") < stages.index("install")
    result = events[-1]
    assert result["event"] == "result" and result["model"] == "tiny-v2" and result["base_model"] == "tiny-random"
    assert Path(result["model_dir"]) == home / "models" / "tiny-v2"
    assert result["decoder"] == "painted_spine"  # derived from the anatomy's name
    assert result["anatomies"] == [{"name": NEW, "label": 1000, "new": True, "replaces": None}]
    assert result["validation_dice"] == val[-1]["validation_dice"]
    assert 0 <= result["training_dice"] <= 1 and result["seconds"] > 0


def test_install_writes_a_new_version_and_keeps_the_base(installed: tuple[Path, list[dict]], tiny_model_dir: Path,
                                                         slabs: dict[str, Path]) -> None:
    from clnet.manifest import read_manifest

    home, events = installed
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny-v2"]  # no staging folder left
    assert json.loads((home / "config.json").read_text())["default_model"] == "tiny-v2"
    new, old = read_manifest(home / "models" / "tiny-v2"), read_manifest(tiny_model_dir)
    assert new.name == "tiny-v2" and new.version == str(int(old.version) + 1) and new.created
    assert new.base_model == {"name": "tiny-random", "version": old.version,
                              "manifest_sha256": sha256_file(tiny_model_dir / "manifest.json")}
    for old_file in tiny_model_dir.glob("*.safetensors"):
        assert sha256_file(home / "models" / "tiny-v2" / old_file.name) == sha256_file(old_file)
    info = new.decoders["painted_spine"].info
    assert info["validation"]["dice"] == events[-1]["validation_dice"]
    assert info["validation"]["image"] == "held_ct.nii.gz" and info["validation"]["segment"] == PAINTED
    assert info["validation"]["image_sha256"] == sha256_file(slabs["held_ct"])
    assert [p["image"] for p in info["training_pairs"]] == ["train_ct.nii.gz"]
    assert str(slabs["train_ct"].parent) not in info["provenance"]["command"]  # file names, not folders
    listing = subprocess.run([sys.executable, "-m", "clnet", "models", "list"], capture_output=True, text=True,
                             env={**__import__("os").environ, "CLNET_HOME": str(home)}, check=True).stdout
    assert "tiny-v2" in listing and "from tiny-random v" in listing


def test_add_decoder_errors_are_clear(installed: tuple[Path, list[dict]], tiny_model_dir: Path,
                                      slabs: dict[str, Path], tmp_path: Path) -> None:
    home, _ = installed
    pair = ["--pair", str(slabs["train_ct"]), str(slabs["train_seg"]), PAINTED]
    empty = np.zeros((4, 5, 6), np.uint8)
    empty_map = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(empty), str(empty_map))
    cases = {
        "is already installed": ["--install", "tiny-v2", *pair],
        "is empty": ["--install", "tiny-v3", "--pair", str(slabs["train_ct"]), str(empty_map), "1"],
        "--validate image": ["--install", "tiny-v3", *pair, "--validate", str(tmp_path / "gone.nii.gz"),
                             str(slabs["held_seg"]), PAINTED],
        "exactly one": [*pair],
    }
    for expected, args in cases.items():
        proc, events = _run_json(["--model", str(tiny_model_dir), "--new-anatomy", "Other", *args, *FAST], home)
        assert proc.returncode == 2, (expected, proc.stderr[-1500:])
        assert events[0]["event"] == "hello" and events[-1]["event"] == "error", expected
        assert expected in events[-1]["message"] and events[-1]["exit_code"] == 2 and events[-1]["hint"]
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny-v2"]


def test_replacement_rule_in_the_manifest(tiny_model_dir: Path) -> None:
    from clnet.manifest import DecoderEntry, read_manifest

    m = read_manifest(tiny_model_dir)  # Liver is in both "abdomen" and "spine": the first listed owns it
    assert m.anatomy_owner()["Liver"] == "abdomen" and m.ignored_channels("spine") == set()
    cfg = m.decoders["abdomen"].config
    m.decoders["fix1"] = DecoderEntry("fix1", ["Liver"], cfg, replaces={"Liver": "abdomen"})
    assert m.anatomy_owner()["Liver"] == "fix1"
    assert m.ignored_channels("abdomen") == {"Liver"} and m.ignored_channels("spine") == {"Liver"}
    m.decoders["fix2"] = DecoderEntry("fix2", ["Liver", "Spleen"], cfg, replaces={"Liver": "fix1", "Spleen": "abdomen"})
    owner = m.anatomy_owner()
    assert owner["Liver"] == "fix2" and owner["Spleen"] == "fix2" and owner["Kidney_L"] == "abdomen"
    assert m.ignored_channels("fix1") == {"Liver"} and m.ignored_channels("abdomen") == {"Liver", "Spleen"}
    again = type(m).from_dict(m.to_dict())
    assert again.decoders["fix2"].replaces == {"Liver": "fix1", "Spleen": "abdomen"}


def test_correction_wins_and_other_anatomies_are_bit_identical(tiny_model_dir: Path, slabs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """Correct Spleen twice (decoder abdomen → fix1 → fix2): the newest owns it, abdomen's other
    anatomies and every other decoder keep exactly their voxels, old files stay byte-identical."""
    from clnet import Segmenter
    from clnet.checkpoint import load_model
    from clnet.training.add_decoder import add_decoder

    cfg = TrainConfig(steps=3, batch_size=1, patch_size_zyx=(16, 32, 32), warmup_steps=1, lr=3e-2,
                      ema_decay=0.0, augment=AugmentConfig(affine_prob=0.0, intensity_prob=0.0),
                      checkpoint_every=1000, fg_fraction=0.9)
    pair = [(str(slabs["train_ct"]), str(slabs["train_seg"]), PAINTED)]
    v2, v3 = tmp_path / "v2", tmp_path / "v3"
    add_decoder(tiny_model_dir, "fix1", None, ["spleen"], v2, cfg, progress=False, evaluate=False, pairs=pair)
    add_decoder(v2, "fix2", None, ["Spleen"], v3, cfg, progress=False, evaluate=False, pairs=pair)
    m3 = load_model(v3).manifest
    assert m3.decoders["fix1"].replaces == {"Spleen": "abdomen"} and m3.decoders["fix2"].replaces == {"Spleen": "fix1"}
    assert m3.anatomy_owner()["Spleen"] == "fix2" and m3.base_model["name"] == "tiny-random"
    for f in [*tiny_model_dir.glob("*.safetensors"), v2 / "decoder_fix1.safetensors"]:
        assert sha256_file(v3 / f.name) == sha256_file(f)

    ct = str(slabs["held_ct"])
    runs = {}
    for name, folder in (("old", tiny_model_dir), ("new", v3)):
        seg = Segmenter(folder, device="cpu", gating=False)
        r = seg.segment(ct, locate=False, per_decoder=True)
        runs[name] = (sitk.GetArrayFromImage(r.labels),
                      {d: sitk.GetArrayFromImage(i) for d, i in r.decoder_labels.items()})
    (old, old_heads), (new, new_heads) = runs["old"], runs["new"]
    for d in ("abdomen", "spine"):  # every old decoder decides exactly as before
        assert np.array_equal(old_heads[d], new_heads[d])
    from clnet.catalog import load_catalog

    spleen = load_catalog().by_name("Spleen").label
    fix2 = new_heads["fix2"] == 1
    assert np.all(fix2[new == spleen])  # Spleen comes from the newest correction only ...
    free = fix2 & np.isin(old_heads["abdomen"], [0, 2]) & (old_heads["spine"] == 0)  # nobody else claims
    assert free.any() and np.all(new[free] == spleen)  # there the correction's Spleen stands unopposed
    old_spleen_channel = old_heads["abdomen"] == 2  # abdomen's channel 2 is Spleen
    assert np.any(old_spleen_channel & ~fix2) or not old_spleen_channel.any()
    assert not np.any((new == spleen) & old_spleen_channel & ~fix2)  # ... abdomen's Spleen channel is ignored
    keep = (old != spleen) & ~fix2  # away from Spleen (old or new), every voxel is what it was
    assert np.array_equal(new[keep], old[keep])


def test_painted_examples_give_the_decoder_a_body_part_window(example_ct: Path, tmp_path: Path) -> None:
    """The window covers the painted slices' scores with a margin, and leaves out slices far from them."""
    from clnet.bodypart import load_default
    from clnet.training.datasets import CaseSpec
    from clnet.training.painted_window import MIN_MARGIN, painted_window

    img = sitk.ReadImage(str(example_ct))
    mask = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)  # (z, y, x), z from the file's first slice
    mask[2:8, 40:60, 40:60] = 1
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(img)
    sitk.WriteImage(m[:, :, 0:20], str(tmp_path / "mask.nrrd"))  # a cropped mask is placed by its geometry
    scorer = load_default()
    scores = np.asarray(scorer.score_details(img).cleaned)  # LPS slices: the file's z order here (RAS file)
    assert scores[-1] > scores[0]
    spec = CaseSpec("pair000", example_ct, tmp_path / "mask.nrrd", {1: "x"})
    lo, hi = painted_window(scorer, [spec])
    painted = scores[2:8]
    assert lo <= painted.min() - MIN_MARGIN + 0.01 and hi >= painted.max() + MIN_MARGIN - 0.01
    assert scores[-1] > hi  # the top of this scan is far above the painted pelvis slices
    # A correction keeps the old window inside the new one.
    assert painted_window(scorer, [spec], previous=(lo - 30, lo + 1)) == (round(lo - 30, 2), hi)


def test_correcting_one_of_my_anatomies(learned: Path, example_ct: Path, painted: Path, tmp_path: Path) -> None:
    """Retraining a user anatomy is a correction: same label, the new decoder owns it, old files identical."""
    from clnet.checkpoint import load_model
    from clnet.training.add_decoder import add_decoder
    from clnet.training.learn import anatomies_of

    cfg = TrainConfig(steps=2, batch_size=1, patch_size_zyx=(16, 32, 32), warmup_steps=1, ema_decay=0.0,
                      augment=AugmentConfig(affine_prob=0.0, intensity_prob=0.0), checkpoint_every=1000)
    before = load_model(learned).manifest
    out = tmp_path / "v3"
    add_decoder(learned, "mine_again", None, [NEW.lower()], out, cfg, progress=False, evaluate=False,
                pairs=[(str(example_ct), str(painted), PAINTED)])
    after = load_model(out).manifest
    [user] = after.user_anatomies
    assert user["decoder"] == "mine_again" and user["label"] == before.user_anatomies[0]["label"]
    assert after.decoders["mine_again"].replaces == {NEW: "mine"} and after.anatomy_owner()[NEW] == "mine_again"
    assert after.ignored_channels("mine") == {NEW}
    assert anatomies_of(after, "mine_again") == [{"name": NEW, "label": user["label"], "new": False,
                                                  "replaces": "mine"}]
    for f in learned.glob("*.safetensors"):
        assert sha256_file(out / f.name) == sha256_file(f)
