"""Helpers that need the Slicer application (MRML node selectors, the self-test loader)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CREATE_NEW_TEXT = "Create new segmentation on Segment"


def makeNodeSelector(kind: str):
    """A ``qMRMLNodeComboBox`` for the input CT ("volume") or the output ("segmentation")."""
    import slicer

    selector = slicer.qMRMLNodeComboBox()
    if kind == "volume":
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.showChildNodeTypes = False  # no labelmaps
        selector.noneEnabled = False
    else:
        selector.nodeTypes = ["vtkMRMLSegmentationNode"]
        selector.noneEnabled = True  # "none" = create a new segmentation when the run finishes
        selector.noneDisplay = CREATE_NEW_TEXT
        selector.renameEnabled = True
    selector.addEnabled = False
    selector.removeEnabled = False
    selector.setMRMLScene(slicer.mrmlScene)
    return selector


def loadSelfTest(moduleDir: str | Path):
    """The ``CLNetSegmentationTest`` class from ``Testing/Python`` (present in source checkouts)."""
    path = Path(moduleDir) / "Testing" / "Python" / "CLNetSegmentationTest.py"
    if not path.is_file():
        raise AttributeError("CLNetSegmentationTest (the self-test ships only with the source tree)")
    spec = importlib.util.spec_from_file_location("CLNetSegmentationTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CLNetSegmentationTest
