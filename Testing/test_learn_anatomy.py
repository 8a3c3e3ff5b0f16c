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
from clnet.errors import ClnetError
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
