"""Self-test run inside Slicer ("Reload and Test", or ctest via slicer_add_python_unittest).

It uses a sample CT from the SampleData module and a tiny random-weight model built on the fly,
so it checks the plumbing (engine call, MRML import, names, tags, cancel) and not accuracy.
"""

from __future__ import annotations

import tempfile
import threading

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class CLNetSegmentationTest(ScriptedLoadableModuleTest):
    """Logic and panel smoke test on a real CT."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_panel_lists_the_catalog()
        self.setUp()
        self.test_segment_sample_ct()

    def _tinyModel(self, anatomies: list[str]) -> str:
        from clnet.manifest import Normalization, Preprocessing
        from clnet.model.factory import build_manifest, save_random_model, tiny_encoder

        prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64), overlap=0.25,
                             normalization=Normalization(-1024, 1500, -300.0, 500.0))
        manifest = build_manifest("selftest", tiny_encoder(), {"DEC": anatomies}, preprocessing=prep)
        self._tmp = tempfile.TemporaryDirectory()
        return str(save_random_model(f"{self._tmp.name}/selftest", manifest))

    def test_panel_lists_the_catalog(self) -> None:
        self.delayDisplay("Opening the module panel")
        slicer.util.selectModule("CLNetSegmentation")
        widget = slicer.modules.clnetsegmentation.widgetRepresentation().self()
        tree = widget.panel.tree
        count = sum(tree.topLevelItem(i).childCount() for i in range(tree.topLevelItemCount()))
        self.assertEqual(count, 235)
        widget.tree.applyPreset("Abdominal organs")
        self.assertIn("Liver", widget.tree.model.selected())

    def test_segment_sample_ct(self) -> None:
        import SampleData
        from CLNetSegmentationLib import ANATOMY_TAG, clnetSegmentIds, segmentTag
        from CLNetSegmentationLib.dependencies import ensureDependencies
        from CLNetSegmentationLib.volume import volumeFingerprint

        self.assertTrue(ensureDependencies(askConfirmation=False))
        from clnet.errors import CancelledError

        import CLNetSegmentation

        self.delayDisplay("Loading sample CT")
        volume = SampleData.downloadSample("CTChest")
        anatomies = ["Liver", "Spleen", "Heart", "Lung_L", "Lung_R"]
        logic = CLNetSegmentation.CLNetSegmentationLogic(model=self._tinyModel(anatomies))
        fingerprint = volumeFingerprint(volume)

        self.delayDisplay("Cancelled run leaves the scene unchanged")
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        cancel = threading.Event()
        cancel.set()
        with self.assertRaises(CancelledError):
            logic.segment(volume, anatomies=anatomies, device="cpu", cancel=cancel)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

        self.delayDisplay("Segmenting (random-weight model: arbitrary labels)")
        segmentation = logic.segment(volume, anatomies=anatomies, device="cpu")
        segments = segmentation.GetSegmentation()
        ids = clnetSegmentIds(segmentation)
        self.assertGreater(len(ids), 0)
        for segmentId in ids:
            self.assertIn(segmentTag(segments.GetSegment(segmentId), ANATOMY_TAG), anatomies)
        self.assertEqual(volumeFingerprint(volume), fingerprint)
        self.delayDisplay("Test passed")
