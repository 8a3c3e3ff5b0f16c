"""CLNetSegmentationLogic: segment a volume node with the clnet engine in a worker process.

Works inside Slicer and in plain Python with the ``slicer-core`` wheel. The engine runs in a child
process (``clnet segment``, see ``job.py`` and ``process_job.py``); this process only writes the
input, follows the progress events and imports the result, so it never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .job import SegmentationJob
from .learn import DEFAULT_STEPS
from .process_job import ProgressCallback
from .segments import clnetSegmentIds, importLabels, placeBeside

if TYPE_CHECKING:
    from clnet.catalog import Anatomy

try:  # inside Slicer: gives getParameterNode() and friends
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # plain Python with slicer-core
    _LogicBase = object

log = logging.getLogger(__name__)

MODEL_ATTRIBUTE = "CLNet.Model"
"""Segmentation node attribute: the model (name and version) that made its CLNet segments."""

Cancel = threading.Event | Callable[[], bool] | None


class CLNetSegmentationLogic(_LogicBase):
    """Runs CL-Net on volume nodes and imports the result as segments.

    >>> logic = CLNetSegmentationLogic()
    >>> seg = logic.segment(volumeNode, anatomies=["Liver", "Spleen"])

    Each run is one worker process (``clnet segment``) that loads the model, segments and exits.
    """

    def __init__(self, model: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.model = model
        self._job: SegmentationJob | None = None

    # -- model -------------------------------------------------------------------------------
    def availableAnatomies(self, model: str | os.PathLike | None = None) -> list[Anatomy]:
        """Anatomies the model can segment, its own "My anatomies" included (reads only its manifest)."""
        return self.modelAnatomies(model)[1]

    def modelAnatomies(self, model: str | os.PathLike | None = None) -> tuple[list[Anatomy], list[Anatomy]]:
        """(every anatomy of the model's catalog: the packaged catalog plus the model's user anatomies,
        the ones it can segment). Reads only the manifest, not the weights."""
        from clnet.catalog.user import catalog_for
        from clnet.checkpoint import read_manifest
        from clnet.registry import resolve_model

        manifest = read_manifest(resolve_model(model if model is not None else self.model))
        catalog = catalog_for(manifest)
        names = {catalog.by_name(n).name for n in manifest.anatomy_owner() if n in catalog}
        return list(catalog), [a for a in catalog if a.name in names]

    def downloadOfficialModel(self, heads: Sequence[str] | None = None, blocking: bool = True,
                              progressCallback: ProgressCallback | None = None, cancel: Cancel = None):
        """Download, verify and install the official CL-Net model (``heads``: official or friendly names;
        all nine when None) in a worker process and make it the default model.

        Blocking: returns the result (``model``, ``path``, ``heads``, sizes) or raises the run's error
        (``ClnetError`` with a hint, ``CancelledError``). Otherwise returns the started ``ProcessJob``:
        poll it, then ``finish()``.
        """
        from .model_download import downloadJob

        job = downloadJob(heads).start()
        if not blocking:
            return job
        isCancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        job.wait(progressCallback=progressCallback, isCancelled=isCancelled)
        return job.finish()

    def learnAnatomy(
        self,
        volumeNodes: Sequence,
        segmentationNodes: Sequence,
        segmentIds: Sequence[str],
        name: str,
        steps: int = DEFAULT_STEPS,
        validation: tuple | None = None,
        color: Sequence[int] | None = None,
        code: str | None = None,
        model: str | os.PathLike | None = None,
        blocking: bool = True,
        onProgress: ProgressCallback | None = None,
        *,
        device: str = "auto",
        installName: str | None = None,
        cancel: Cancel = None,
        extraArgs: Sequence[str] = (),
    ):
        """Teach a model the anatomy ``name`` from painted segments, in the worker process.

        ``volumeNodes[i]``, ``segmentationNodes[i]`` and ``segmentIds[i]`` form one training example;
        ``validation`` is one held-out (volume, segmentation, segment ID). ``name``: a catalog anatomy
        (corrected when the model has it, learned when it lacks it) or a new name, with optional
        ``color`` (RGB 0-255) and terminology ``code`` (``SCHEME^VALUE^MEANING``). The base model is
        ``model`` (default: the logic's model, else clnet's default); the result is a new version
        installed beside it in the user model folder (``<base>-<anatomy>-v2``, or ``installName``).

        Blocking: returns the new model's name, or raises ``ClnetError`` / ``CancelledError``. The
        scene and the nodes are never modified. Otherwise returns the started :class:`LearnJob`
        (poll it, then ``finish()`` gives the result event).
        """
        from .learn import LearnJob, LearnRequest, LearnTriple

        if not (len(volumeNodes) == len(segmentationNodes) == len(segmentIds)):
            raise ValueError("volumeNodes, segmentationNodes and segmentIds must have the same length.")
        spec = model if model is not None else self.model
        request = LearnRequest(
            [LearnTriple(v, s, i) for v, s, i in zip(volumeNodes, segmentationNodes, segmentIds)], name,
            validation=LearnTriple(*validation) if validation is not None else None,
            color=tuple(int(c) for c in color) if color is not None else None, code=code or None,
            model=str(spec) if spec not in (None, "") else None, steps=int(steps), device=device,
            installName=installName, extraArgs=list(extraArgs))
        job = LearnJob(request).start()
        if not blocking:
            return job
        isCancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        job.wait(progressCallback=onProgress, isCancelled=isCancelled)
        return job.finish()["model"]

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
        cancel: Cancel = None,
    ):
        """Segment ``inputVolumeNode`` now (blocking) and return the segmentation node.

        Runs the same worker process as the panel and waits for it. Raises
        ``clnet.errors.ClnetError`` for problems the user can fix and ``CancelledError`` when
        cancelled; in both cases the scene is left exactly as it was.
        """
        job = self.createJob(inputVolumeNode, anatomies, outputSegmentationNode, device, fast,
                             regions=regions, model=model, force=force, cancel=cancel)
        job.start()
        job.wait(progressCallback=progressCallback)
        return job.finish()

    def runInBackground(
        self,
        inputVolumeNode,
        anatomies: Sequence[str] | None = None,
        outputSegmentationNode=None,
        device: str = "auto",
        fast: bool = False,
        **kwargs,
    ) -> SegmentationJob:
        """Start a run in a worker process and return at once. Call ``job.poll()`` from the main
        thread (a ``qt.QTimer``) until it returns True, then ``job.finish()`` to import the result
        (``finish`` raises the run's error, if any)."""
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
        cancel: Cancel = None,
    ) -> SegmentationJob:
        """A not-yet-started job (``start()`` writes the input and launches the worker)."""
        if inputVolumeNode is None or inputVolumeNode.GetScene() is None:
            raise ValueError("The input volume node must be in a scene.")
        checkOutputNode(inputVolumeNode, outputSegmentationNode)
        spec = model if model is not None else self.model
        options = ["--device", str(device)]
        if spec is not None and str(spec) != "":
            options += ["--model", str(spec)]
        if anatomies:
            options += ["--anatomies", *anatomies]
        if regions:
            options += ["--regions", *regions]
        if fast:
            options.append("--fast")
        if force:
            options.append("--force")

        def importer(outputDir: Path, event: dict):
            return self.importResultFolder(job, outputDir, event)

        isCancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        job = SegmentationJob(inputVolumeNode, outputSegmentationNode, options, importer, isCancelled)
        self._job = job
        return job

    # -- MRML --------------------------------------------------------------------------------
    def importResultFolder(self, job: SegmentationJob, outputDir: Path, event: dict):
        """Put the worker's output (``segmentation.nii.gz`` + ``segmentation.json``) into a
        segmentation node beside the input (main thread only); fills ``job.summary``."""
        import SimpleITK as sitk

        inputVolumeNode, outputSegmentationNode = job.inputVolumeNode, job.outputSegmentationNode
        info = json.loads((outputDir / "segmentation.json").read_text(encoding="utf-8"))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outputDir / "segmentation.nii.gz")))
        catalog = _resultCatalog(info.get("settings", {}))
        requested = [catalog.by_name(n) for n in event.get("requested", [])]
        present = [catalog.by_name(n) for n in event.get("present", [])]
        scene = inputVolumeNode.GetScene()
        created = outputSegmentationNode is None
        segmentationNode = outputSegmentationNode
        if created:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{inputVolumeNode.GetName()} CLNet"))
        try:
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            if created:  # a node the user chose keeps its transform and place in the hierarchy
                segmentationNode.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
            ownsGeometry = created or _onlyClnetSegments(segmentationNode)
            importLabels(segmentationNode, labels, inputVolumeNode, requested, setReferenceGeometry=ownsGeometry)
            settings = info.get("settings", {})
            segmentationNode.SetAttribute(MODEL_ATTRIBUTE, f"{settings.get('model')} {settings.get('model_version')}")
            if created:
                placeBeside(segmentationNode, inputVolumeNode)
        except Exception:
            if created:  # leave the scene as it was
                scene.RemoveNode(segmentationNode)
            raise
        warnings = list(info.get("warnings", []))
        for warning in warnings:
            log.warning(warning)
        missing = [a.display_name for a in requested if a not in present]
        if missing:
            log.info("Not found in this image: %s", ", ".join(missing))
        job.summary = {"requested": requested, "present": present, "missing": missing, "warnings": warnings,
                       "timings": info.get("timings_s", {}), "settings": settings}
        return segmentationNode


def outcomeText(summary: dict) -> tuple[str, str]:
    """(short status for the progress bar, one line for the log) of a finished run's summary."""
    found = f"{len(summary['present'])} of {len(summary['requested'])} anatomies found"
    seconds = sum(summary.get("timings", {}).values())
    line = f"Done in {seconds:.1f} s of engine time: {found}."
    if summary.get("missing"):
        line += f" Not found: {', '.join(summary['missing'])}."
    warnings = " ".join(summary.get("warnings", []))
    return f"Done: {found}", f"{line} {warnings}".strip()


def _resultCatalog(settings: dict):
    """The catalog the run used: the packaged one plus its model's "My anatomies"."""
    from clnet.catalog import load_catalog
    from clnet.catalog.user import catalog_for
    from clnet.checkpoint import read_manifest

    modelDir = settings.get("model_dir")
    return catalog_for(read_manifest(modelDir)) if modelDir else load_catalog()


def _onlyClnetSegments(segmentationNode) -> bool:
    segmentation = segmentationNode.GetSegmentation()
    return set(clnetSegmentIds(segmentationNode)) == set(segmentation.GetSegmentIDs())


def checkOutputNode(inputVolumeNode, outputSegmentationNode) -> None:
    """Refuse an output segmentation that would put the result in the wrong place."""
    from clnet.errors import ClnetError

    if outputSegmentationNode is None:
        return
    if outputSegmentationNode.GetScene() is not inputVolumeNode.GetScene():
        raise ClnetError("The output segmentation is not in the input volume's scene.",
                         "Choose another output, or let the module create a new segmentation.")
    if outputSegmentationNode.GetTransformNodeID() != inputVolumeNode.GetTransformNodeID():
        raise ClnetError(
            f"The output segmentation '{outputSegmentationNode.GetName()}' is under a different transform "
            f"than the CT '{inputVolumeNode.GetName()}', so the result would be misplaced.",
            "Put both under the same transform (Data module), or choose 'Create new segmentation'.")


__all__ = ["MODEL_ATTRIBUTE", "CLNetSegmentationLogic", "checkOutputNode", "outcomeText"]
