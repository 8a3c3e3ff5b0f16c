"""Helpers that need the Slicer application (MRML node selectors, terminology, the self-test loader)."""

from __future__ import annotations

import importlib.util
import logging
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


def showError(exc: BaseException, details: str = "", logLine=None) -> None:
    """One message box that says what to do; the worker's output and tracebacks go only to the log."""
    import slicer
    from clnet.errors import ClnetError

    log = logging.getLogger("CLNetSegmentation")
    if details.strip():
        log.info("Worker output:\n%s", details)
    if not isinstance(exc, ClnetError):
        log.error("CLNet Segmentation failed", exc_info=exc)
        if logLine is not None:
            logLine(f"{type(exc).__name__}: {exc}")
    slicer.util.errorDisplay(str(exc) if isinstance(exc, ClnetError) else f"Segmentation failed: {exc}")


def loadTerminology() -> str:
    """Load clnet's terminology context (all 235 anatomies) into Slicer's Terminologies module, so
    the terminology selector shows the module's segments as matched. Returns the context name
    ('' when the Terminologies module is not available)."""
    import slicer
    from clnet.catalog.terminology import TERMINOLOGY_FILE

    module = getattr(getattr(slicer, "modules", None), "terminologies", None)
    if module is None:
        logging.getLogger(__name__).warning("The Terminologies module is not loaded; segments keep their "
                                            "codes but Slicer cannot list them.")
        return ""
    return module.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


def loadSelfTest(moduleDir: str | Path):
    """The ``CLNetSegmentationTest`` class from ``Testing/Python`` (present in source checkouts)."""
    path = Path(moduleDir) / "Testing" / "Python" / "CLNetSegmentationTest.py"
    if not path.is_file():
        raise AttributeError("CLNetSegmentationTest (the self-test ships only with the source tree)")
    spec = importlib.util.spec_from_file_location("CLNetSegmentationTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CLNetSegmentationTest
