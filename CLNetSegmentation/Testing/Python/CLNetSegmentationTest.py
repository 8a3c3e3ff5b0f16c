"""Self-test run inside Slicer ("Reload and Test", or ctest via slicer_add_python_unittest).

It runs the bundled demonstration model through the real asynchronous path (a worker process
followed by polling, as the panel does) on the example CT that ships with the engine
(``clnet/data/example_ct.nii.gz``, installed with the extension: no network). It checks the
segment names, colours and tags, where the segments are (left hip bone on the patient's left, the
bladder between the hip bones), their geometry, that the input volume is bit-identical afterwards,
and that Cancel leaves the scene as it was.

The checks are plain functions on a scene (:class:`SelfTestChecks`), so the repository's CI runs
the same code against the ``slicer-core`` wheel (``Testing/test_slicer_logic.py``).
"""

from __future__ import annotations

import time
import unittest

import numpy as np

try:
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest
except ImportError:  # plain Python with slicer-core (CI)
    ScriptedLoadableModuleTest = unittest.TestCase

ANATOMIES = ["UrinaryBladder", "Bone_Hip_L", "Bone_Hip_R", "Bone_Femur_L", "Bone_Femur_R"]
"""What the demo model finds in the example CT (Dice 0.37-0.72 there: see models/demo/README.md)."""
RUN_OPTIONS = {"device": "cpu", "fast": True}
"""Fast mode keeps the self-test to seconds on a CPU; it runs the same worker path as normal mode."""


class SelfTestChecks:
    """The self-test's work, independent of the Slicer application (``pump`` keeps a GUI alive)."""

    def __init__(self, scene, pump=lambda: None, log=print) -> None:
        self.scene = scene
        self.pump = pump
        self.log = log

    def loadExampleCt(self):
        """The example CT, read by Slicer's own volume storage node."""
        import slicer
        from clnet.data import example_ct

        volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "example_ct")
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(example_ct()))
        if not storage.ReadData(volume):
            raise AssertionError(f"Slicer could not read {example_ct()}")
        volume.SetAndObserveStorageNodeID(storage.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if shNode is not None and not shNode.GetItemByDataNode(volume):
            shNode.CreateItem(shNode.CreateStudyItem(shNode.GetSceneItemID(), "Study"), volume)
        return volume

    def runAsync(self, job, timeout: float = 600.0, cancelAfterFirstTile: bool = False):
        """Poll a started job as the widget's timer does; return ``job.finish()``."""
        start = time.monotonic()
        while not job.poll():
            self.pump()
            if cancelAfterFirstTile and job.progress[0].startswith("Network: tile"):
                job.cancel()
            if time.monotonic() - start > timeout:
                job.cancel()
                raise AssertionError(f"the segmentation did not finish within {timeout:.0f} s")
            time.sleep(0.1)
        return job.finish()

    def checkSegmentation(self, segmentation, volume) -> dict[str, np.ndarray]:
        """Names, colours, tags and geometry of the module's segments; returns each segment's mask."""
        import slicer
        from clnet.catalog import load_catalog
        from CLNetSegmentationLib import ANATOMY_TAG, clnetSegmentIds, segmentTag

        catalog = load_catalog()
        segmentationData = segmentation.GetSegmentation()
        ids = clnetSegmentIds(segmentation)
        names = {segmentTag(segmentationData.GetSegment(i), ANATOMY_TAG): i for i in ids}
        missing = [a for a in ANATOMIES if a not in names]
        assert not missing, f"the demo model found none of {missing} in the example CT"
        for name, segmentId in names.items():
            segment, anatomy = segmentationData.GetSegment(segmentId), catalog.by_name(name)
            assert segment.GetName() == anatomy.display_name, (segment.GetName(), anatomy.display_name)
            assert np.allclose(segment.GetColor(), [c / 255 for c in anatomy.color], atol=1e-6)
            assert segmentTag(segment, segment.GetTerminologyEntryTagName()).startswith(
                "Segmentation category and type - CLNet Segmentation~")
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        assert reference is volume, "the segmentation's reference geometry is not the input CT"
        masks = {}
        for name, segmentId in names.items():
            masks[name] = self._mask(segmentation, segmentId, volume, slicer)
            assert masks[name].any(), f"{name} is empty"
        return masks

    def checkPlacement(self, masks: dict[str, np.ndarray], volume) -> None:
        """Left is left and the bladder sits between the hip bones (catches flipped axes)."""
        centre = {name: self._centroidRas(mask, volume) for name, mask in masks.items()}
        # RAS: x grows towards the patient's right, so the left hip bone has the smaller x.
        left, right, bladder = centre["Bone_Hip_L"], centre["Bone_Hip_R"], centre["UrinaryBladder"]
        assert left[0] < right[0], f"the left hip bone (R={left[0]:.0f} mm) is not left of the right one ({right[0]:.0f})"
        assert left[0] < bladder[0] < right[0], "the bladder is not between the hip bones"
        femurs = centre["Bone_Femur_L"][2], centre["Bone_Femur_R"][2]
        assert max(femurs) < min(left[2], right[2]), "the femurs are not below the hip bones"

    @staticmethod
    def _mask(segmentation, segmentId, volume, slicer) -> np.ndarray:
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonCore import vtkStringArray

        scene = volume.GetScene()
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtkStringArray()
        ids.InsertNextValue(segmentId)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
        dims = labelmap.GetImageData().GetDimensions()
        array = numpy_support.vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars())
        scene.RemoveNode(labelmap)
        assert ok and dims == volume.GetImageData().GetDimensions(), "segment not on the CT's grid"
        return array.reshape(dims[2], dims[1], dims[0]) > 0

    @staticmethod
    def _centroidRas(mask: np.ndarray, volume) -> np.ndarray:
        from CLNetSegmentationLib.volume import ijkToRasArray

        k, j, i = (axis.mean() for axis in np.nonzero(mask))
        return (ijkToRasArray(volume) @ np.array([i, j, k, 1.0]))[:3]


class CLNetSegmentationTest(ScriptedLoadableModuleTest):
    """The module in the running Slicer: panel, a real segmentation in a worker process, cancel."""

    def setUp(self) -> None:
        import slicer

        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_panel_lists_the_catalog()
        self.setUp()
        self.test_segment_example_ct()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _checks(self) -> SelfTestChecks:
        import slicer

        return SelfTestChecks(slicer.mrmlScene, pump=slicer.app.processEvents, log=self.delayDisplay)

    def test_panel_lists_the_catalog(self) -> None:
        import slicer

        self.delayDisplay("Opening the module panel")
        slicer.util.selectModule("CLNetSegmentation")
        widget = slicer.modules.clnetsegmentation.widgetRepresentation().self()
        tree = widget.panel.tree
        count = sum(tree.topLevelItem(i).childCount() for i in range(tree.topLevelItemCount()))
        self.assertEqual(count, 235)
        widget.tree.applyPreset("Abdominal organs")
        self.assertIn("Liver", widget.tree.model.selected())
        self.assertTrue(slicer.modules.terminologies.logic().IsTerminologyContextLoaded(
            "Segmentation category and type - CLNet Segmentation"))

    def test_segment_example_ct(self) -> None:
        from CLNetSegmentationLib.dependencies import ensureDependencies
        from CLNetSegmentationLib.volume import volumeFingerprint

        import CLNetSegmentation

        ensureDependencies(askConfirmation=False)
        checks = self._checks()
        volume = checks.loadExampleCt()
        fingerprint = volumeFingerprint(volume)
        self.delayDisplay("Segmenting the example CT with the bundled demo model (worker process)")
        logic = CLNetSegmentation.CLNetSegmentationLogic()
        segmentation = checks.runAsync(logic.runInBackground(volume, ANATOMIES, **RUN_OPTIONS))
        masks = checks.checkSegmentation(segmentation, volume)
        checks.checkPlacement(masks, volume)
        self.assertEqual(volumeFingerprint(volume), fingerprint)
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self) -> None:
        import slicer
        from clnet.errors import CancelledError

        import CLNetSegmentation

        checks = self._checks()
        volume = checks.loadExampleCt()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        job = CLNetSegmentation.CLNetSegmentationLogic().runInBackground(volume, ANATOMIES, **RUN_OPTIONS)
        with self.assertRaises(CancelledError):
            checks.runAsync(job, cancelAfterFirstTile=True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.assertFalse(job.workDir.exists())
        self.delayDisplay("Test passed")
