"""CLNetSegmentationLogic with real MRML (the ``slicer-core`` wheel), on the real example CT.

Every run goes through the worker process (``clnet segment`` in a child Python), as in Slicer.
The model is a tiny random-weight CL-Net built in a fixture: its labels are arbitrary but
deterministic, which is all these tests need (the module must reproduce the engine's own output
voxel for voxel, with catalog names, colors and terminology). A coarse 6 mm grid keeps each run to
a couple of seconds on a shared CPU. The last tests run the in-Slicer self-test's checks with the
bundled demo model.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (real MRML in plain Python)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("this 'slicer' module has no MRML", allow_module_level=True)

sitk = pytest.importorskip("SimpleITK")
from vtkmodules.util import numpy_support  # noqa: E402
from vtkmodules.vtkCommonCore import VTK_SHORT, vtkStringArray  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "CLNetSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from clnet.catalog import load_catalog  # noqa: E402
from clnet.catalog.terminology import slicer_terminology  # noqa: E402
from clnet.errors import CancelledError  # noqa: E402
from clnet.inference.segmenter import Segmenter  # noqa: E402
from clnet.manifest import Normalization, Preprocessing  # noqa: E402
from clnet.model.factory import build_manifest, save_random_model, tiny_encoder  # noqa: E402
from CLNetSegmentationLib import ANATOMY_TAG, CLNetSegmentationLogic, clnetSegmentIds, segmentTag  # noqa: E402
from CLNetSegmentationLib.segments import ensureConverterRules  # noqa: E402
from CLNetSegmentationLib.volume import volumeFingerprint, volumeToSitk  # noqa: E402

ABDOMEN = ["Liver", "Spleen", "Kidney_R", "Kidney_L", "Stomach", "Pancreas"]
BONES = ["Bone_Vert_L1", "Bone_Vert_L2", "Bone_Hip_L"]
SUBSET = ["Liver", "Spleen", "Kidney_L", "Bone_Vert_L1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight model with two decoders (abdomen, bones); 6 mm grid, 2 tiles."""
    prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64), overlap=0.25,
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    manifest = build_manifest("slicer-test", tiny_encoder(), {"DEC_ABD": ABDOMEN, "DEC_BONE": BONES},
                              preprocessing=prep)
    return save_random_model(tmp_path_factory.mktemp("model") / "slicer-test", manifest)


@pytest.fixture(scope="module")
def ct_path(example_ct) -> Path:
    return example_ct


@pytest.fixture(scope="module")
def engine_labels(model_dir, ct_path) -> np.ndarray:
    """The engine's own multilabel output for SUBSET, straight from the file."""
    result = Segmenter(model_dir, device="cpu").segment(ct_path, anatomies=SUBSET)
    return sitk.GetArrayFromImage(result.labels)


@pytest.fixture(scope="module")
def logic(model_dir) -> CLNetSegmentationLogic:
    return CLNetSegmentationLogic(model=model_dir)


def load_scene(ct_path: Path):
    """A fresh scene with the CT read by Slicer's own volume storage node, inside a study item."""
    ensureConverterRules()
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "example_ct")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(ct_path))
    assert storage.ReadData(volume)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    # Plain Python has no subject-hierarchy plugins that file nodes automatically; do it by hand.
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.GetSceneItemID(), "Study")
    sh.CreateItem(study, volume)
    return scene, volume


def export_array(segmentation, volume, segment_ids: list[str]) -> np.ndarray:
    """Segments exported to a labelmap on the volume's grid (values 1..n in the order given)."""
    scene = volume.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
    dims = labelmap.GetImageData().GetDimensions()
    exported = numpy_support.vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars())
    exported = exported.reshape(dims[2], dims[1], dims[0]).copy()
    scene.RemoveNode(labelmap)
    return exported


def exported_labels(segmentation, volume, segment_ids: list[str]) -> np.ndarray:
    """Export ``segment_ids`` to a labelmap on the volume's grid, mapped back to catalog labels."""
    exported = export_array(segmentation, volume, segment_ids)
    seg = segmentation.GetSegmentation()
    lut = np.zeros(len(segment_ids) + 1, np.int32)
    for i, segment_id in enumerate(segment_ids, start=1):
        lut[i] = load_catalog().by_name(segmentTag(seg.GetSegment(segment_id), ANATOMY_TAG)).label
    return lut[exported]


@pytest.fixture(scope="module")
def first_run(logic, ct_path):
    """One run of SUBSET into a new segmentation, with the scene state before and after."""
    scene, volume = load_scene(ct_path)
    before = volumeFingerprint(volume), scene.GetNumberOfNodes()
    segmentation = logic.segment(volume, anatomies=SUBSET, device="cpu")
    return scene, volume, segmentation, before


def test_volume_conversion_matches_file(ct_path):
    scene, volume = load_scene(ct_path)
    image = volumeToSitk(volume)
    reference = sitk.ReadImage(str(ct_path))
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference))


def test_oblique_geometry_roundtrip():
    """Any rotation: voxel (i, j, k) lands on the same point in RAS (Slicer) and LPS (ITK)."""
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    data = vtkImageData()
    data.SetDimensions(4, 5, 6)
    data.AllocateScalars(VTK_SHORT, 1)
    volume.SetAndObserveImageData(data)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    ijk_to_ras[:3, 3] = [10.0, -20.0, 30.0]
    matrix = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    volume.SetIJKToRASMatrix(matrix)
    image = volumeToSitk(volume)
    np.testing.assert_allclose(image.GetSpacing(), [0.7, 0.8, 2.5], atol=1e-9)
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        ras = ijk_to_ras @ np.array([*ijk, 1.0])
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)


def test_segments_are_the_present_anatomies_with_catalog_metadata(first_run, engine_labels):
    _, _, segmentation, _ = first_run
    catalog = load_catalog()
    present = [catalog.by_label(v) for v in np.unique(engine_labels) if v]
    assert present, "the random model produced no label at all; the test would prove nothing"
    seg = segmentation.GetSegmentation()
    ids = clnetSegmentIds(segmentation)
    assert list(seg.GetSegmentIDs()) == ids
    assert [segmentTag(seg.GetSegment(i), ANATOMY_TAG) for i in ids] == [a.name for a in present]
    for segment_id, anatomy in zip(ids, present):
        segment = seg.GetSegment(segment_id)
        assert segment.GetName() == anatomy.display_name
        np.testing.assert_allclose(segment.GetColor(), [c / 255 for c in anatomy.color], atol=1e-6)
        expected = slicer_terminology(anatomy).to_slicer_string()
        assert segmentTag(segment, segment.GetTerminologyEntryTagName()) == expected
    assert seg.GetSourceRepresentationName() == "Binary labelmap"
    assert segmentation.GetDisplayNode() is not None


def test_voxels_equal_engine_output(first_run, engine_labels):
    _, volume, segmentation, _ = first_run
    labels = exported_labels(segmentation, volume, clnetSegmentIds(segmentation))
    values, counts = np.unique(engine_labels, return_counts=True)
    got_values, got_counts = np.unique(labels, return_counts=True)
    assert dict(zip(got_values.tolist(), got_counts.tolist())) == dict(zip(values.tolist(), counts.tolist()))
    assert np.array_equal(labels, engine_labels)


def test_input_volume_untouched_and_placed_beside(first_run):
    scene, volume, segmentation, (fingerprint, node_count) = first_run
    assert volumeFingerprint(volume) == fingerprint
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    assert reference is volume


def test_rerun_replaces_only_its_own_segments(logic, first_run, engine_labels):
    scene, volume, segmentation, _ = first_run
    seg = segmentation.GetSegmentation()
    user_id = seg.AddEmptySegment("my_tumor", "My tumor")
    nodes = scene.GetNumberOfNodes()
    again = logic.segment(volume, anatomies=["Spleen", "Bone_Vert_L1"], outputSegmentationNode=segmentation,
                          device="cpu")
    assert again is segmentation and scene.GetNumberOfNodes() == nodes
    assert user_id in seg.GetSegmentIDs() and seg.GetSegment(user_id).GetName() == "My tumor"
    tags = [segmentTag(seg.GetSegment(i), ANATOMY_TAG) for i in clnetSegmentIds(segmentation)]
    catalog = load_catalog()
    expected = [catalog.by_label(v).name for v in np.unique(engine_labels) if v]
    assert tags == [n for n in expected if n in ("Spleen", "Bone_Vert_L1")]


@pytest.mark.parametrize("when", ["before", "first_tile"])
def test_cancel_leaves_scene_unchanged(logic, ct_path, when):
    scene, volume = load_scene(ct_path)
    nodes, fingerprint = scene.GetNumberOfNodes(), volumeFingerprint(volume)
    event = threading.Event()
    if when == "before":
        event.set()

    def progress(text: str, fraction: float) -> None:
        if text.startswith("Network: tile"):
            event.set()

    with pytest.raises(CancelledError):
        logic.segment(volume, anatomies=SUBSET, device="cpu", progressCallback=progress, cancel=event)
    assert scene.GetNumberOfNodes() == nodes
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    assert volumeFingerprint(volume) == fingerprint


def test_background_job_then_import_on_main_thread(logic, ct_path, engine_labels):
    scene, volume = load_scene(ct_path)
    job = logic.runInBackground(volume, anatomies=SUBSET, device="cpu")
    assert job.pid is not None and job.pid != os.getpid()  # a worker process, not a thread
    assert job.wait(timeout=120)
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None  # nothing imported yet
    assert any(m.startswith("Network") for m in job.takeMessages())
    segmentation = job.finish()
    assert not job.workDir.exists()  # the input copy and the worker's outputs are gone
    labels = exported_labels(segmentation, volume, clnetSegmentIds(segmentation))
    assert np.array_equal(labels, engine_labels)
    assert sorted(a.name for a in job.summary["requested"]) == sorted(SUBSET)


def test_background_cancel_before_start(logic, ct_path):
    scene, volume = load_scene(ct_path)
    nodes = scene.GetNumberOfNodes()
    job = logic.createJob(volume, anatomies=SUBSET, device="cpu")
    job.cancel()
    job.start()
    assert job.pid is None and job.wait(timeout=5)
    with pytest.raises(CancelledError):
        job.finish()
    assert scene.GetNumberOfNodes() == nodes and not job.workDir.exists()


def _run_until_done(job, timeout: float = 120) -> None:
    start = time.monotonic()
    while not job.poll():
        assert time.monotonic() - start < timeout
        time.sleep(0.05)


def _wait_for_first_progress(job, timeout: float = 60) -> None:
    start = time.monotonic()
    while job.progress[0] == "Waiting" and not job.poll():
        assert time.monotonic() - start < timeout
        time.sleep(0.05)


@pytest.mark.parametrize("what", ["input", "output", "scene"])
def test_removing_a_node_or_closing_the_scene_cancels(logic, ct_path, what):
    """The input or output leaving the scene (or the scene closing) stops the worker; nothing is imported."""
    scene, volume = load_scene(ct_path)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    job = logic.runInBackground(volume, anatomies=SUBSET, outputSegmentationNode=output, device="cpu")
    _wait_for_first_progress(job)
    {"input": lambda: scene.RemoveNode(volume), "output": lambda: scene.RemoveNode(output),
     "scene": scene.Clear}[what]()
    assert job.cancelRequested
    _run_until_done(job, timeout=30)
    with pytest.raises(CancelledError, match="removed from the scene" if what != "scene" else "scene was closed"):
        job.finish()
    assert not job.workDir.exists()
    assert output.GetSegmentation().GetNumberOfSegments() == 0


def test_user_segmentation_keeps_its_segments_transform_and_geometry(logic, ct_path):
    """Into a segmentation the user chose: own segments replaced, the user's bit-identical, nothing moved."""
    from CLNetSegmentationLib.segments import _orientedLabelmap

    scene, volume = load_scene(ct_path)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.SetAndObserveTransformNodeID(transform.GetID())
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other grid")  # the user's reference geometry
    other.SetAndObserveImageData(volume.GetImageData())
    other.SetSpacing(2.0, 2.0, 2.0)
    output.SetReferenceImageGeometryParameterFromVolumeNode(other)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "my folder")
    sh.CreateItem(folder, output)
    seg = output.GetSegmentation()
    user_id = seg.AddEmptySegment("tumor", "My tumor", [0.1, 0.2, 0.3])
    user_mask = np.zeros(volume.GetImageData().GetDimensions()[::-1], np.uint8)
    user_mask[40:50, 30:40, 50:60] = 1
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _orientedLabelmap(user_mask, volume), output, user_id)
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = (output.GetNodeReferenceID(output.GetReferenceImageGeometryReferenceRole()),
                seg.GetConversionParameter(geometry_name))
    before = export_array(output, volume, [user_id])
    assert before.sum() == user_mask.sum()

    again = logic.segment(volume, anatomies=SUBSET, outputSegmentationNode=output, device="cpu")
    assert again is output and clnetSegmentIds(output)
    assert np.array_equal(export_array(output, volume, [user_id]), before)
    user = seg.GetSegment(user_id)
    assert user.GetName() == "My tumor" and np.allclose(user.GetColor(), [0.1, 0.2, 0.3])
    assert not user.HasTag(ANATOMY_TAG)
    assert output.GetTransformNodeID() == transform.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(output)) == folder
    assert (output.GetNodeReferenceID(output.GetReferenceImageGeometryReferenceRole()),
            seg.GetConversionParameter(geometry_name)) == geometry


def test_output_under_another_transform_is_refused(logic, ct_path):
    from clnet.errors import ClnetError

    scene, volume = load_scene(ct_path)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "elsewhere")
    output.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(ClnetError, match="different transform"):
        logic.segment(volume, anatomies=SUBSET, outputSegmentationNode=output, device="cpu")
    assert scene.GetNumberOfNodes() == nodes and output.GetSegmentation().GetNumberOfSegments() == 0


def test_new_segmentation_follows_the_ct_transform(logic, ct_path):
    scene, volume = load_scene(ct_path)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = logic.segment(volume, anatomies=["Spleen"], device="cpu", regions=None)
    assert segmentation.GetTransformNodeID() == transform.GetID()


def test_worker_error_reaches_the_caller_and_leaves_the_scene(logic, ct_path):
    from clnet.errors import ClnetError

    scene, volume = load_scene(ct_path)
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(ClnetError, match="(?i)unknown anatomy|not.*catalog|NoSuchOrgan"):
        logic.segment(volume, anatomies=["NoSuchOrgan"], device="cpu")
    assert scene.GetNumberOfNodes() == nodes


# -- terminology -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def terminologies():
    from clnet.catalog.terminology import SLICER_CATEGORY_TYPE_CONTEXT, TERMINOLOGY_FILE

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE)) == SLICER_CATEGORY_TYPE_CONTEXT
    return logic, SLICER_CATEGORY_TYPE_CONTEXT


def _context_entries(logic, context) -> dict[tuple, tuple]:
    """(type scheme, type value, modifier scheme, modifier value) -> (colour, 3dSlicerLabel), read back
    through Slicer's own terminology logic."""
    entries = {}
    category = slicer.vtkSlicerTerminologyCategory()
    for c in range(logic.GetNumberOfCategoriesInTerminology(context)):
        assert logic.GetNthCategoryInTerminology(context, c, category)
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            kind = slicer.vtkSlicerTerminologyType()
            assert logic.GetNthTypeInTerminologyCategory(context, category, t, kind)
            key = (kind.GetCodingSchemeDesignator(), kind.GetCodeValue())
            modifiers = logic.GetNumberOfTypeModifiersInTerminologyType(context, category, kind)
            if not modifiers:
                entries[key + ("", "")] = (tuple(kind.GetRecommendedDisplayRGBValue()), kind.GetSlicerLabel())
            for m in range(modifiers):
                modifier = slicer.vtkSlicerTerminologyType()
                assert logic.GetNthTypeModifierInTerminologyType(context, category, kind, m, modifier)
                entries[key + (modifier.GetCodingSchemeDesignator(), modifier.GetCodeValue())] = (
                    tuple(modifier.GetRecommendedDisplayRGBValue()), modifier.GetSlicerLabel())
    return entries


def test_terminology_file_lists_every_anatomy_with_its_code_and_colour(terminologies):
    from clnet.catalog.terminology import slicer_terminology

    logic, context = terminologies
    entries = _context_entries(logic, context)
    catalog = load_catalog()
    assert len(entries) == len(catalog) == 235
    for anatomy in catalog:
        term = slicer_terminology(anatomy)
        modifier = (term.modifier.scheme, term.modifier.value) if term.modifier else ("", "")
        colour, label = entries[(term.type.scheme, term.type.value) + modifier]
        assert colour == tuple(anatomy.color) and label == anatomy.display_name, anatomy.name


def test_segment_terminology_tags_match_the_context(first_run, terminologies):
    """Each segment's TerminologyEntry names our context and an entry in it (so Slicer shows it matched)."""
    logic, context = terminologies
    entries = _context_entries(logic, context)
    _, _, segmentation, _ = first_run
    seg = segmentation.GetSegmentation()
    for segment_id in clnetSegmentIds(segmentation):
        segment = seg.GetSegment(segment_id)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(segmentTag(segment, segment.GetTerminologyEntryTagName()), entry)
        assert entry.GetTerminologyContextName() == context
        kind, modifier = entry.GetTypeObject(), entry.GetTypeModifierObject()
        key = (kind.GetCodingSchemeDesignator(), kind.GetCodeValue(),
               modifier.GetCodingSchemeDesignator() or "", modifier.GetCodeValue() or "")
        assert entries[key][1] == segment.GetName()


# -- the in-Slicer self-test's checks, with the bundled demo model ------------------------------------


def _self_test_module():
    import importlib.util

    path = MODULE_DIR / "Testing" / "Python" / "CLNetSegmentationTest.py"
    spec = importlib.util.spec_from_file_location("CLNetSegmentationTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_self_test_checks_with_the_demo_model():
    """What "Reload and Test" runs in Slicer: demo model, worker process, example CT, placement."""
    selftest = _self_test_module()
    ensureConverterRules()
    scene = slicer.vtkMRMLScene()
    checks = selftest.SelfTestChecks(scene)
    volume = checks.loadExampleCt()
    fingerprint = volumeFingerprint(volume)
    job = CLNetSegmentationLogic().runInBackground(volume, selftest.ANATOMIES, **selftest.RUN_OPTIONS)
    segmentation = checks.runAsync(job, timeout=300)
    masks = checks.checkSegmentation(segmentation, volume)
    checks.checkPlacement(masks, volume)
    assert volumeFingerprint(volume) == fingerprint
    assert "demo" in segmentation.GetAttribute("CLNet.Model")


def test_self_test_cancel_with_the_demo_model():
    selftest = _self_test_module()
    ensureConverterRules()
    scene = slicer.vtkMRMLScene()
    checks = selftest.SelfTestChecks(scene)
    volume = checks.loadExampleCt()
    nodes = scene.GetNumberOfNodes()
    job = CLNetSegmentationLogic().runInBackground(volume, selftest.ANATOMIES, **selftest.RUN_OPTIONS)
    with pytest.raises(CancelledError):
        checks.runAsync(job, timeout=300, cancelAfterFirstTile=True)
    assert scene.GetNumberOfNodes() == nodes and not job.workDir.exists()


def test_find_first_ct_skips_labelmaps_and_non_ct(ct_path):
    from CLNetSegmentationLib.volume import findFirstCt

    scene, volume = load_scene(ct_path)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    data = vtkImageData()
    data.SetDimensions(2, 2, 2)
    data.AllocateScalars(VTK_SHORT, 1)
    data.GetPointData().GetScalars().Fill(0)
    labelmap.SetAndObserveImageData(data)
    scene.RemoveNode(volume)
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr")  # no air: not a CT
    other.SetAndObserveImageData(data)
    scene.AddNode(volume)
    assert findFirstCt(scene) is volume
    scene.RemoveNode(volume)
    assert findFirstCt(scene) is other
    assert findFirstCt(slicer.vtkMRMLScene()) is None
