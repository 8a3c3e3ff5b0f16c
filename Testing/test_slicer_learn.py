"""The Slicer module's Learn flow (issue 19), end to end without Slicer.

Real MRML (the ``slicer-core`` wheel) holds the real example CT with a painted segmentation (the
body, HU > -300, in the upper half of the scan; air) and, as the held-out example, a separate volume
node cropped from the lowest slices of the scan with the body painted on it.
``learnAnatomy`` exports them and runs ``clnet add-decoder`` through the REAL worker process into a
temporary CLNET home; the new version is then listed by the tree model under "My anatomies" and
segmenting with it through the logic yields a segment with the new name. The base model is a tiny
random-weight model on a 6 mm grid and training is 20 small CPU steps, so what the decoder learns is
rough (the body is chosen because even that finds some of it); the tests check the plumbing, the
scene's safety and the messages, not accuracy.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (real MRML in plain Python)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("this 'slicer' module has no MRML", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CLNetSegmentation"))

from clnet.errors import CancelledError, ClnetError  # noqa: E402
from clnet.manifest import Normalization, Preprocessing  # noqa: E402
from clnet.model.factory import build_manifest, save_random_model, tiny_encoder  # noqa: E402
from CLNetSegmentationLib import CLNetSegmentationLogic  # noqa: E402
from CLNetSegmentationLib.anatomy_tree import AnatomyTreeModel  # noqa: E402
from CLNetSegmentationLib.learn import LearnRequest, LearnTriple, checkRequest, newVersionName, segmentMask  # noqa: E402
from CLNetSegmentationLib.segments import _orientedLabelmap, ensureConverterRules  # noqa: E402
from CLNetSegmentationLib.volume import volumeFingerprint, voxelView  # noqa: E402

NEW = "Painted body"
FAST = ["--patch", "16", "32", "32", "--batch-size", "2", "--lr", "3e-2", "--warmup", "2", "--ema-decay", "0",
        "--rotate", "0", "--scale", "0", "--fg-fraction", "0.5", "--no-eval", "--checkpoint-every", "1000"]
STEPS = 20


def paint(scene, volume, name: str, masks: dict[str, np.ndarray]):
    """A segmentation node beside ``volume`` with one segment per mask (as if painted in the Segment Editor)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    labels = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        labels[mask & (labels == 0)] = value
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        _orientedLabelmap(labels, volume), node, "")
    segmentation = node.GetSegmentation()
    for segmentId, segmentName in zip(segmentation.GetSegmentIDs(), masks):
        segmentation.GetSegment(segmentId).SetName(segmentName)
    return node


def segmentId(node, name: str) -> str:
    return node.GetSegmentation().GetSegmentIdBySegmentName(name)


def segmentArrays(node) -> dict[str, np.ndarray]:
    """Every segment's binary labelmap as a copy (to prove the user's segmentation was not changed)."""
    from vtkmodules.util import numpy_support

    out = {}
    for sid in node.GetSegmentation().GetSegmentIDs():
        image = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, sid, image, False)
        out[sid] = (image.GetExtent(), numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy())
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A temporary CLNET home for this module (the worker inherits it)."""
    path = tmp_path_factory.mktemp("clnet-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLNET_HOME", str(path))
        mp.delenv("CLNET_MODEL", raising=False)
        yield path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64), overlap=0.25,
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    manifest = build_manifest("learn-base", tiny_encoder(), {"DEC_ABD": ["Liver", "Spleen"]}, preprocessing=prep)
    return save_random_model(tmp_path_factory.mktemp("base") / "learn-base", manifest, seed=5)


def crop_slices(scene, volume, name: str, first: int, last: int):
    """A new volume node holding slices ``first:last`` of ``volume`` (voxels copied, geometry shifted)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    voxels = np.ascontiguousarray(voxelView(volume)[first:last])
    image = vtkImageData()
    image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.ravel(), deep=True))
    m = vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    for row in range(3):
        m.SetElement(row, 3, m.GetElement(row, 3) + first * m.GetElement(row, 2))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(m)
    return node


@pytest.fixture(scope="module")
def scene(example_ct):
    """The example CT with the body painted in its upper half (and air); a held-out slab with its body."""
    ensureConverterRules()
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "example CT")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(example_ct))
    assert storage.ReadData(volume)
    hu = voxelView(volume)
    upper = np.zeros(hu.shape, bool)
    upper[hu.shape[0] // 2:] = True
    segmentation = paint(scene, volume, "painted", {NEW: (hu > -300) & upper, "Air": hu < -900})
    segmentation.GetSegmentation().AddEmptySegment("empty", "Nothing yet")
    slab = crop_slices(scene, volume, "held-out slab", 0, hu.shape[0] // 4)
    held = paint(scene, slab, "held-out painted", {NEW: voxelView(slab) > -300})
    return scene, volume, segmentation, slab, held


@pytest.fixture(scope="module")
def learned(home, base_model, scene):
    """One learnAnatomy run through the worker process; what it returned, reported, and left in the scene."""
    _scene, volume, seg, slab, held = scene
    before = (volumeFingerprint(volume), segmentArrays(seg), seg.GetSegmentation().GetNumberOfSegments(),
              _scene.GetNumberOfNodes())
    progress: list[tuple[str, float]] = []
    start = time.monotonic()
    name = CLNetSegmentationLogic().learnAnatomy(
        [volume], [seg], [segmentId(seg, NEW)], name=NEW, steps=STEPS, color=(10, 200, 30),
        code="SCT^38266002^Entire body", model=str(base_model), device="cpu",
        validation=(slab, held, segmentId(held, NEW)), onProgress=lambda t, f: progress.append((t, f)),
        extraArgs=FAST)
    return {"name": name, "progress": progress, "before": before, "seconds": time.monotonic() - start}


def test_learn_installs_a_new_version_and_reports_progress(learned, home, base_model):
    from clnet.checkpoint import read_manifest, sha256_file

    name = learned["name"]
    assert name == "learn-base-painted-body-v2"
    model_dir = home / "models" / name
    manifest = read_manifest(model_dir)
    [user] = manifest.user_anatomies
    assert user["name"] == NEW and user["label"] >= 1000 and user["color"] == [10, 200, 30]
    assert user["code"] == ["SCT", "38266002", "Entire body"]
    info = manifest.decoders[user["decoder"]].info
    [pair] = info["training_pairs"]
    assert pair["image"].endswith(".nrrd") and pair["segment"] == "1" and len(pair["image_sha256"]) == 64
    assert info["validation"]["dice"] is not None
    for old in base_model.glob("*.safetensors"):  # continual learning: the old files, byte for byte
        assert sha256_file(model_dir / old.name) == sha256_file(old)
    texts = [t for t, _f in learned["progress"]]
    assert any(t.startswith("Training: step") and "loss" in t for t in texts), texts
    assert any("validation Dice" in t for t in texts), texts
    assert learned["progress"][-1][1] == pytest.approx(1.0, abs=0.05)
    assert base_model.is_dir() and not (home / "models" / "learn-base").exists()  # the base is untouched


def test_learn_leaves_the_users_nodes_unchanged(learned, scene):
    _scene, volume, seg, *_held = scene
    fingerprint, arrays, count, nodes = learned["before"]
    assert volumeFingerprint(volume) == fingerprint  # voxels and geometry, bit-identical
    assert seg.GetSegmentation().GetNumberOfSegments() == count and _scene.GetNumberOfNodes() == nodes
    after = segmentArrays(seg)
    assert after.keys() == arrays.keys()
    for sid, (extent, values) in arrays.items():
        assert after[sid][0] == extent and np.array_equal(after[sid][1], values)


def test_tree_lists_the_new_anatomy_under_my_anatomies(learned):
    anatomies, available = CLNetSegmentationLogic().modelAnatomies(learned["name"])
    tree = AnatomyTreeModel(anatomies, [a.name for a in available])
    assert "My anatomies" in tree.regions() and tree.namesIn("My anatomies") == [NEW]
    assert tree.isAvailable(NEW) and tree.isAvailable("Liver") and not tree.isAvailable("Stomach")
    assert tree.setSelected([NEW.lower()]) == [] and tree.selected() == [NEW]


def test_segmenting_with_the_new_version_yields_the_new_segment(learned, scene):
    from CLNetSegmentationLib import ANATOMY_TAG, LABEL_TAG, segmentTag

    _scene, volume, *_nodes = scene
    logic = CLNetSegmentationLogic()
    result = logic.segment(volume, anatomies=[NEW], model=learned["name"], device="cpu")
    try:
        segmentation = result.GetSegmentation()
        [sid] = segmentation.GetSegmentIDs()
        segment = segmentation.GetSegment(sid)
        assert segment.GetName() == NEW and segmentTag(segment, ANATOMY_TAG) == NEW
        assert int(segmentTag(segment, LABEL_TAG)) >= 1000
        assert [round(c * 255) for c in segment.GetColor()] == [10, 200, 30]
        assert learned["name"] in result.GetAttribute("CLNet.Model")
    finally:
        _scene.RemoveNode(result)


# -- checks before anything runs ----------------------------------------------------------------
def _other_volume(scene, volume, shift_mm: float):
    """A copy of the CT moved ``shift_mm`` along x (its own node; the CT is not touched)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moved CT")
    other.SetAndObserveImageData(volume.GetImageData())
    m = vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    m.SetElement(0, 3, m.GetElement(0, 3) + shift_mm)
    other.SetIJKToRASMatrix(m)
    return other


def test_request_errors_are_specific(home, base_model, scene):
    _scene, volume, seg, *_held = scene
    logic = CLNetSegmentationLogic(model=base_model)
    body = segmentId(seg, NEW)

    def learn(**kw):
        args = {"volumeNodes": [volume], "segmentationNodes": [seg], "segmentIds": [body], "name": "Thing"} | kw
        with pytest.raises(ClnetError) as info:
            logic.learnAnatomy(**args, steps=3, device="cpu")
        return f"{info.value} {getattr(info.value, 'hint', '')}"

    assert "at least one" in learn(volumeNodes=[], segmentationNodes=[], segmentIds=[])
    assert "is empty" in learn(segmentIds=["empty"]) and "Nothing yet" in learn(segmentIds=["empty"])
    message = learn(segmentIds=["Spleen"])
    assert "not in the segmentation 'painted'" in message and "'Air'" in message
    far = _other_volume(_scene, volume, 5000.0)
    try:
        assert "do not overlap" in learn(volumeNodes=[far])
    finally:
        _scene.RemoveNode(far)
    assert "catalog anatomy" in learn(name="Spleen", color=(1, 2, 3))
    assert "SCHEME^VALUE^MEANING" in learn(code="not a code")
    assert "not usable" in learn(name="bad/name")
    assert "also a training example" in learn(validation=(volume, seg, body))
    assert "Name the anatomy" in learn(name="  ")
    transform = _scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    seg.SetAndObserveTransformNodeID(transform.GetID())
    try:
        assert "different transforms" in learn()
    finally:
        seg.SetAndObserveTransformNodeID(None)
        _scene.RemoveNode(transform)
    assert not (home / "models").exists() or not any((home / "models").iterdir()) or \
        all(p.name.startswith("learn-base-painted-body") for p in (home / "models").iterdir())


def test_one_of_my_anatomies_is_retrained_as_a_correction(learned, scene):
    from CLNetSegmentationLib.learn import addDecoderArguments

    _scene, volume, seg, *_held = scene
    request = LearnRequest([LearnTriple(volume, seg, segmentId(seg, NEW))], NEW.upper(), model=learned["name"])
    modelDir, _manifest, kind, name = checkRequest(request)
    assert (kind, name) == ("mine", NEW)  # the model's own spelling, whatever the case typed
    args = addDecoderArguments(request, Path(modelDir), kind, name, [(Path("ct.nrrd"), Path("m.nrrd"), "1")], None, "v3")
    assert args[args.index("--anatomies") + 1] == NEW and "--new-anatomy" not in args
    recoloured = LearnRequest([LearnTriple(volume, seg, segmentId(seg, NEW))], NEW, color=(1, 2, 3), model=learned["name"])
    with pytest.raises(ClnetError, match="already one of the model's anatomies"):
        checkRequest(recoloured)
    catalog = LearnRequest([LearnTriple(volume, seg, segmentId(seg, NEW))], "left kidney", model=learned["name"])
    assert checkRequest(catalog)[2:] == ("catalog", "Kidney_L")


def test_segment_mask_is_the_segment_on_the_volume_grid(scene):
    _scene, volume, seg, *_held = scene
    hu = voxelView(volume)
    mask = segmentMask(LearnTriple(volume, seg, segmentId(seg, "Air")))
    assert mask.shape == hu.shape and mask.dtype == np.uint8
    assert np.array_equal(mask.astype(bool), hu < -900)


def test_new_version_names_are_unique():
    assert newVersionName("demo", "My Spleen", set()) == "demo-my-spleen-v2"
    assert newVersionName("demo", "My Spleen", {"demo-my-spleen-v2"}) == "demo-my-spleen-v3"
    assert newVersionName("demo-my-spleen-v2", "My Spleen", {"demo-my-spleen-v2"}) == "demo-my-spleen-v3"
    assert newVersionName("demo-my-spleen-v2", "Liver", set()) == "demo-my-spleen-v2-liver-v2"


def test_cancel_stops_training_and_installs_nothing(home, base_model, scene):
    from clnet.registry import list_models

    _scene, volume, seg, *_held = scene

    def visible() -> list[str]:  # what a user (and the model selector) sees in the model folder
        root = home / "models"
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []

    before, models = visible(), [n for n, _p, _m in list_models()]
    job = CLNetSegmentationLogic().learnAnatomy(
        [volume], [seg], [segmentId(seg, NEW)], name="Cancelled body", steps=5000, model=str(base_model),
        device="cpu", blocking=False, extraArgs=FAST)
    start = time.monotonic()
    while not job.poll() and not job.progress[0].startswith("Training"):
        assert time.monotonic() - start < 120, job.progress
        time.sleep(0.05)
    assert job.pid != os.getpid() and job.installName == "learn-base-cancelled-body-v2"
    job.cancel()
    assert job.wait(timeout=15)
    with pytest.raises(CancelledError):
        job.finish()
    assert not job.workDir.exists()  # the exported CT and masks are gone
    assert visible() == before and [n for n, _p, _m in list_models()] == models
    hidden = list((home / "models").glob(".learn-*")) if (home / "models").exists() else []
    assert hidden == []  # the worker removed its staging folder (resampled scans, checkpoints) too


# -- the panel's Learn section (PySide6, off screen) ----------------------------------------------
@pytest.fixture(scope="module")
def app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6 (PySide6-Essentials)")
    from CLNetSegmentationLib.screenshot import ensureApplication

    return ensureApplication()


def test_learn_section_trains_and_selects_the_new_version(app, home, learned, scene, tmp_path):
    """Rows from the scene, held-out exclusivity, catalog vs new name, a refused start, then a real run
    whose end switches the model selector (refreshModels) to the installed version."""
    from CLNetSegmentationLib.environment import modelChoices
    from CLNetSegmentationLib.learn_panel import CANCEL_TEXT, ROLLBACK_TIP, TRAIN_TEXT, LearnSection
    from CLNetSegmentationLib.qt_compat import value
    from CLNetSegmentationLib.screenshot import saveWidgetScreenshot

    _scene, volume, seg, slab, held = scene
    errors, selected, log = [], [], []
    section = LearnSection(CLNetSegmentationLogic(), selected.append, lambda exc, d, lg: errors.append(str(exc)),
                           log.append, scene=_scene, device=lambda: "cpu")
    section.extraArgs = FAST
    try:
        section.setExpanded(True)
        row = section.rows[0]
        combo_texts = lambda c: [c.itemText(i) for i in range(c.count())]  # noqa: E731
        assert combo_texts(row.volume.combo) == ["example CT", "held-out slab"]
        assert combo_texts(row.segmentation.combo) == ["painted", "held-out painted"]
        assert combo_texts(row.segment) == [NEW, "Air", "Nothing yet"]
        second = section.addRow()
        second.volume.setCurrentNode(slab)
        second.segmentation.setCurrentNode(held)
        assert combo_texts(second.segment) == [NEW]
        second.heldOut.setChecked(True)
        row.heldOut.setChecked(True)
        assert not second.heldOut.isChecked()  # one held-out example at most
        row.heldOut.setChecked(False)
        second.heldOut.setChecked(True)
        seg.GetSegmentation().AddEmptySegment("late", "Painted later")  # a segment added in the Segment Editor
        assert "Painted later" in combo_texts(row.segment)
        seg.GetSegmentation().RemoveSegment("late")
        assert "Painted later" not in combo_texts(row.segment)

        section.anatomyCombo.setEditText("left kidney")
        assert section.anatomyKind() == "catalog" and not section.colorButton.isEnabled()
        section.anatomyCombo.setEditText("")
        section.start()
        assert section.job is None and errors and "Name the anatomy" in errors[-1]

        section.setModelChoices(modelChoices(), str(home / "models" / learned["name"]))
        assert section.trainButton.toolTip() == ROLLBACK_TIP and "roll back" in ROLLBACK_TIP
        section.anatomyCombo.setEditText(NEW.lower())  # one of the chosen base model's own anatomies
        assert section.anatomyKind() == "mine" and not section.colorButton.isEnabled()
        assert "retrains" in section.modeLabel.text()
        section.anatomyCombo.setEditText("Panel body")
        assert section.anatomyKind() == "new" and section.colorButton.isEnabled()
        section.stepsSpin.setValue(4)
        errors.clear()
        section.onTrainButton()
        assert not errors and section.job is not None and section.trainButton.text() == CANCEL_TEXT
        assert section.job.installName == f"{learned['name']}-panel-body-v2"  # a version of the chosen base
        start = time.monotonic()
        while section.job is not None:
            assert time.monotonic() - start < 180, "the training did not end"
            section.poll()
            time.sleep(0.05)
        assert not errors, errors
        assert section.trainButton.text() == TRAIN_TEXT
        [path] = selected
        assert Path(path).parent == home / "models" and Path(path).name.endswith("-panel-body-v2")
        assert path in [v for _label, v in modelChoices()]  # what the model selector will select
        assert value(section.progressBar, "format").startswith("Installed") and "held-out Dice" in \
            value(section.progressBar, "format")
        assert any("pick it in the Model selector to go back" in line for line in log)
        image = saveWidgetScreenshot(section.widget, tmp_path / "slicer_learn.png")
        assert image.stat().st_size > 10_000
        if os.environ.get("CLNET_WRITE_DOCS_IMAGES"):  # regenerate the docs image from this real run
            import shutil

            shutil.copy(image, Path(__file__).resolve().parents[1] / "docs" / "images" / "slicer_learn.png")
    finally:
        section.discard()
