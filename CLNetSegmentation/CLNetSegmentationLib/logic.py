"""CLNetSegmentationLogic: segment a volume node with the clnet engine, Qt-free.

Works inside Slicer and in plain Python with the ``slicer-core`` wheel. The engine (``clnet``,
which needs torch) is imported lazily so Slicer can load this module before the first-use
dependency install.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .job import ProgressCallback, SegmentationJob
from .segments import importLabels, placeBeside
from .volume import volumeToSitk

if TYPE_CHECKING:
    from clnet.catalog import Anatomy
    from clnet.inference.segmenter import SegmentationResult, Segmenter

try:  # inside Slicer: gives getParameterNode() and friends
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # plain Python with slicer-core
    _LogicBase = object

log = logging.getLogger(__name__)

MODEL_ATTRIBUTE = "CLNet.Model"
"""Segmentation node attribute: the model (name and version) that made its CLNet segments."""


def _modelKey(model: str | os.PathLike | None) -> str | None:
    """Cache key for a model spec: a resolved folder path, or the name as given."""
    if model is None or str(model) == "":
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


class CLNetSegmentationLogic(_LogicBase):
    """Runs CL-Net on volume nodes and imports the result as segments.

    >>> logic = CLNetSegmentationLogic()
    >>> seg = logic.segment(volumeNode, anatomies=["Liver", "Spleen"])

    The loaded model is cached across calls (per model and device).
    """

    def __init__(self, model: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.model = model
        self._segmenters: dict[tuple[str | None, str], Segmenter] = {}
        self._loadLock = threading.Lock()
        self._job: SegmentationJob | None = None

    # -- model -------------------------------------------------------------------------------
    def getSegmenter(self, model: str | os.PathLike | None = None, device: str = "auto") -> Segmenter:
        """The engine for ``model`` (default: this logic's model, else clnet's default) on ``device``."""
        from clnet.inference.segmenter import Segmenter

        spec = model if model is not None else self.model
        key = (_modelKey(spec), str(device).lower())
        with self._loadLock:  # the worker thread may load while the widget asks for anatomies
            if key not in self._segmenters:
                self._segmenters[key] = Segmenter(spec, device=device)
            return self._segmenters[key]

    def clearCache(self) -> None:
        """Forget loaded models (e.g. after installing a new one under the same name)."""
        with self._loadLock:
            self._segmenters.clear()

    def availableAnatomies(self, model: str | os.PathLike | None = None) -> list[Anatomy]:
        """Catalog anatomies the model can segment (reads only its manifest, not the weights)."""
        from clnet.catalog import load_catalog
        from clnet.checkpoint import read_manifest
        from clnet.registry import resolve_model

        manifest = read_manifest(resolve_model(model if model is not None else self.model))
        catalog = load_catalog()
        names = {catalog.by_name(n).name for n in manifest.anatomy_owner() if n in catalog}
        return [a for a in catalog if a.name in names]

    # -- running -----------------------------------------------------------------------------
    def segment(
        self,
        inputVolumeNode,
        anatomies: Sequence[str] | None = None,
        outputSegmentationNode=None,
        device: str = "auto",
        fast: bool = False,
        progressCallback: ProgressCallback | None = None,
        *,
        regions: Sequence[str] | None = None,
        model: str | os.PathLike | None = None,
        force: bool = False,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ):
        """Segment ``inputVolumeNode`` now (blocking) and return the segmentation node.

        Raises ``clnet.errors.ClnetError`` for problems the user can fix and ``CancelledError``
        when cancelled; in both cases the scene is left exactly as it was.
        """
        job = self.createJob(inputVolumeNode, anatomies, outputSegmentationNode, device, fast,
                             regions=regions, model=model, force=force, cancel=cancel)
        return job.runHere(progressCallback)

    def runInBackground(
        self,
        inputVolumeNode,
        anatomies: Sequence[str] | None = None,
        outputSegmentationNode=None,
        device: str = "auto",
        fast: bool = False,
        **kwargs,
    ) -> SegmentationJob:
        """Start a run in a worker thread; poll ``job.isDone()`` and call ``job.finish()`` on the
        main thread to import the result (``finish`` re-raises the run's error, if any)."""
        return self.createJob(inputVolumeNode, anatomies, outputSegmentationNode, device, fast, **kwargs).start()

    def cancel(self) -> None:
        """Cancel the current run (if any)."""
        if self._job is not None:
            self._job.cancel()

    def createJob(
        self,
        inputVolumeNode,
        anatomies: Sequence[str] | None = None,
        outputSegmentationNode=None,
        device: str = "auto",
        fast: bool = False,
        *,
        regions: Sequence[str] | None = None,
        model: str | os.PathLike | None = None,
        force: bool = False,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> SegmentationJob:
        """A not-yet-started job. The volume is read here, on the calling (main) thread."""
        if inputVolumeNode is None or inputVolumeNode.GetScene() is None:
            raise ValueError("The input volume node must be in a scene.")
        image = volumeToSitk(inputVolumeNode)  # one copy, taken while we own MRML
        names = list(anatomies) if anatomies else None

        def compute(progress: ProgressCallback, isCancelled: Callable[[], bool]) -> SegmentationResult:
            progress("Loading model", 0.0)
            segmenter = self.getSegmenter(model, device)
            return segmenter.segment(image, anatomies=names, regions=regions, fast=fast, force=force,
                                     progress=progress, cancel=isCancelled)

        def finish(result: SegmentationResult):
            return self.importResult(result, inputVolumeNode, outputSegmentationNode)

        external = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        self._job = SegmentationJob(compute, finish, external)
        return self._job

    # -- MRML --------------------------------------------------------------------------------
    def importResult(self, result: SegmentationResult, inputVolumeNode, outputSegmentationNode=None):
        """Put ``result`` into a segmentation node beside the input (main thread only)."""
        import SimpleITK as sitk

        scene = inputVolumeNode.GetScene()
        created = outputSegmentationNode is None
        segmentationNode = outputSegmentationNode
        if created:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{inputVolumeNode.GetName()} CLNet"))
        try:
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
            labels = np.asarray(sitk.GetArrayViewFromImage(result.labels))
            importLabels(segmentationNode, labels, inputVolumeNode, result.requested)
            settings = result.settings
            segmentationNode.SetAttribute(MODEL_ATTRIBUTE, f"{settings.get('model')} {settings.get('model_version')}")
            placeBeside(segmentationNode, inputVolumeNode)
        except Exception:
            if created:  # leave the scene as it was
                scene.RemoveNode(segmentationNode)
            raise
        for warning in result.warnings:
            log.warning(warning)
        missing = [a.display_name for a in result.requested if a not in result.present]
        if missing:
            log.info("Not found in this image: %s", ", ".join(missing))
        return segmentationNode
