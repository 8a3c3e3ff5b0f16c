"""Teach a model an anatomy from segments painted in the scene: checks, export, the ``add-decoder`` job.

A :class:`LearnRequest` names (volume, segmentation, segment) triples, optionally one held-out
triple, the anatomy (a catalog name: correct or learn it; any other name: a new anatomy under "My
anatomies"), the base model, steps and device. :class:`LearnJob` checks it with specific messages,
writes each volume as the segmentation flow does (:func:`.volume.writeVolume`) and each segment as
a 0/1 label map on that volume's grid into the job's folder, then runs ``clnet add-decoder …
--install NEW_VERSION --progress json`` in the worker process (:class:`~.process_job.ProcessJob`).
The user's nodes are only read: voxels, segments and the scene stay as they were.

Qt-free; needs MRML (Slicer or the ``slicer-core`` wheel) and never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .process_job import ProcessJob
from .volume import ijkToRasArray, lpsGeometry, writeVolume

DEFAULT_STEPS = 300
STAGE_TEXT = {"prepare": "Preparing the training data", "train": "Training", "validate": "Validating",
              "verify": "Checking that the old anatomies are unchanged", "install": "Installing the new version"}


@dataclass(frozen=True)
class LearnTriple:
    """One painted example: a CT volume node, a segmentation node and the ID of one of its segments."""

    volumeNode: object
    segmentationNode: object
    segmentId: str

    def segmentName(self) -> str:
        segmentation = self.segmentationNode.GetSegmentation() if self.segmentationNode is not None else None
        segment = segmentation.GetSegment(self.segmentId) if segmentation is not None and self.segmentId else None
        return segment.GetName() if segment is not None else str(self.segmentId)

    def describe(self) -> str:
        return f"segment '{self.segmentName()}' of '{_name(self.segmentationNode)}' on '{_name(self.volumeNode)}'"


@dataclass
class LearnRequest:
    """What to learn, from what, on which model. ``color`` (RGB 0-255) and ``code``
    (``SCHEME^VALUE^MEANING``) describe a new anatomy; a catalog anatomy has its own."""

    triples: Sequence[LearnTriple]
    anatomy: str
    validation: LearnTriple | None = None
    color: tuple[int, int, int] | None = None
    code: str | None = None
    model: str | None = None
    steps: int = DEFAULT_STEPS
    device: str = "auto"
    installName: str | None = None
    extraArgs: list[str] = field(default_factory=list)
    """More ``clnet add-decoder`` options (e.g. ``--batch-size 1``) for scripts and tests."""


def _name(node) -> str:
    return node.GetName() if node is not None else "(none)"


def _error(message: str, hint: str = ""):
    from clnet.errors import ClnetError

    return ClnetError(message, hint)


def slug(text: str) -> str:
    """``My Spleen (upper)`` → ``my-spleen-upper`` (for model and file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "anatomy"


# -- checks ----------------------------------------------------------------------------------
def resolveAnatomy(request: LearnRequest, manifest) -> tuple[str, str]:
    """("catalog", canonical name) for a catalog anatomy (a correction when the model has it, else a
    new head for it), ("mine", name) for one of the model's own anatomies (a correction of it),
    ("new", name) for a new user anatomy; raises on bad name/colour/code."""
    from clnet.catalog import load_catalog
    from clnet.catalog.user import new_user_anatomy, user_anatomies

    name = (request.anatomy or "").strip()
    if not name:
        raise _error("Name the anatomy to learn.",
                     "Pick a catalog anatomy to correct or add it, or type a new name for a new anatomy.")
    entry = load_catalog().get(name)
    if entry is not None:
        if request.color is not None or request.code:
            raise _error(f"'{name}' is the catalog anatomy {entry.display_name} ({entry.name}); a colour or code "
                         "can only be given to a new anatomy.",
                         "Leave colour and code empty to learn or correct the catalog anatomy, or type another "
                         "name for a new anatomy.")
        return "catalog", entry.name
    for existing in user_anatomies(manifest):
        if existing.name.lower() == name.lower():
            if request.color is not None or request.code:
                raise _error(f"'{existing.name}' is already one of the model's anatomies (My anatomies); its "
                             "colour and code stay as they are.",
                             "Leave colour and code empty to retrain it, or type another name for a new anatomy.")
            return "mine", existing.name
    # Same rules as the engine (name characters, colour range, code syntax), checked before any export.
    new_user_anatomy(name, list(manifest.user_anatomies or []), "check", request.color, request.code)
    return "new", name


def segmentMask(triple: LearnTriple, role: str = "training") -> np.ndarray:
    """The triple's segment as a (k, j, i) uint8 0/1 array on its volume's voxel grid.

    Reads the segment's binary labelmap (the node is not modified) and resamples it (nearest
    neighbour) onto the volume's geometry. Raises a specific ``ClnetError`` for every way the
    triple can be unusable.
    """
    import slicer
    from vtkmodules.util import numpy_support

    volume, segNode, segmentId = triple.volumeNode, triple.segmentationNode, triple.segmentId
    where = f"the {role} example" if role else "an example"
    if volume is None or volume.GetScene() is None:
        raise _error(f"Choose a CT volume for {where}.")
    if volume.IsA("vtkMRMLLabelMapVolumeNode") or volume.GetImageData() is None:
        raise _error(f"'{_name(volume)}' in {where} is not a CT volume with image data.", "Choose the CT the segment "
                     "was painted on.")
    if segNode is None or segNode.GetScene() is None:
        raise _error(f"Choose a segmentation for {where} on '{_name(volume)}'.")
    segmentation = segNode.GetSegmentation()
    if not segmentId or segmentation.GetSegment(segmentId) is None:
        names = [f"'{segmentation.GetSegment(s).GetName()}'" for s in segmentation.GetSegmentIDs()]
        raise _error(f"Segment '{segmentId}' is not in the segmentation '{_name(segNode)}' (it has "
                     f"{', '.join(names) or 'no segments'}).", "Pick one of its segments.")
    if segNode.GetTransformNodeID() != volume.GetTransformNodeID():
        raise _error(f"The segmentation '{_name(segNode)}' and the volume '{_name(volume)}' are under different "
                     "transforms, so the segment would be taken from the wrong place.",
                     "Put both under the same transform (Data module).")
    segment = segmentation.GetSegment(segmentId)
    label = slicer.vtkOrientedImageData()
    binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segment.GetRepresentation(binary) is None or not slicer.vtkSlicerSegmentationsModuleLogic.\
            GetSegmentBinaryLabelmapRepresentation(segNode, segmentId, label, False):
        raise _error(f"The {triple.describe()} has no labelmap that can be read.",
                     "Edit it once in the Segment Editor (its source representation must be a binary labelmap).")
    value = segment.GetLabelValue()
    if label.GetPointData().GetScalars() is None or not _count(label, value):
        raise _error(f"The {triple.describe()} is empty.", "Paint the structure in the Segment Editor first.")
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volume.GetImageData().GetExtent())
    reference.SetImageToWorldMatrix(_matrix(volume))
    resampled = slicer.vtkOrientedImageData()
    # Nearest neighbour, output on exactly the reference (volume) extent: what lies outside is cut off.
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(label, reference, resampled,
                                                                                      False, False)
    dims = resampled.GetDimensions()
    if tuple(dims) != tuple(volume.GetImageData().GetDimensions()):
        raise RuntimeError(f"Resampling gave {dims}, not the volume's {volume.GetImageData().GetDimensions()}.")
    flat = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    mask = (flat.reshape(dims[2], dims[1], dims[0]) == value).astype(np.uint8)
    if not mask.any():
        raise _error(f"The {triple.describe()} lies outside the volume: segment and volume do not overlap.",
                     "Pick the volume the segment was painted on.")
    return mask


def _matrix(volume):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return m


def _count(image, value: int) -> int:
    from vtkmodules.util import numpy_support

    return int(np.count_nonzero(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()) == value))


def checkRequest(request: LearnRequest):
    """The checks that need no export: triples given, model readable, anatomy, steps. Returns
    (model folder, its manifest, anatomy kind, anatomy name)."""
    from clnet.checkpoint import read_manifest
    from clnet.registry import resolve_model

    if not request.triples:
        raise _error("Add at least one (volume, segmentation, segment) example to learn from.")
    if int(request.steps) < 1:
        raise _error(f"Steps must be at least 1 (got {request.steps}).")
    if request.validation is not None and request.validation in request.triples:
        raise _error(f"The held-out {request.validation.describe()} is also a training example.",
                     "Hold out a different segment or scan, or none.")
    modelDir = resolve_model(request.model or None)
    manifest = read_manifest(modelDir)
    kind, name = resolveAnatomy(request, manifest)
    return modelDir, manifest, kind, name


# -- naming and arguments ----------------------------------------------------------------------
def newVersionName(baseName: str, anatomy: str, taken: set[str] | None = None) -> str:
    """``<base>-<anatomy-slug>-v2`` (v3, … when taken); a base that is itself such a version keeps its stem."""
    if taken is None:
        taken = installedNames()
    tag = slug(anatomy)
    stem = re.sub(rf"-{re.escape(tag)}-v\d+$", "", baseName)
    n = 2
    while f"{stem}-{tag}-v{n}" in taken:
        n += 1
    return f"{stem}-{tag}-v{n}"


def installedNames() -> set[str]:
    """Names of every model found plus every entry of the user model folder (a name must be new)."""
    from clnet.registry import list_models, user_models_dir

    names = {name for name, _path, _m in list_models()}
    root = user_models_dir()
    if root.is_dir():
        names |= {p.name for p in root.iterdir()}
    return names


def addDecoderArguments(request: LearnRequest, modelDir: Path, kind: str, anatomy: str,
                        pairs: Sequence[tuple[Path, Path, str]], validation: tuple[Path, Path, str] | None,
                        installName: str) -> list[str]:
    """The ``clnet add-decoder`` argument list (see the learn contract)."""
    args = ["add-decoder", "--model", str(modelDir)]
    if kind in ("catalog", "mine"):  # the engine corrects an anatomy the model already has
        args += ["--anatomies", anatomy]
    else:
        args += ["--new-anatomy", anatomy]
        if request.color is not None:
            args += ["--color", *(str(int(c)) for c in request.color)]
        if request.code:
            args += ["--code", request.code]
    for image, seg, segment in pairs:
        args += ["--pair", str(image), str(seg), segment]
    if validation is not None:
        args += ["--validate", *(str(v) for v in validation)]
    args += ["--steps", str(int(request.steps)), "--device", request.device or "auto", "--install", installName,
             *request.extraArgs, "--progress", "json"]
    return args


def writeMask(mask: np.ndarray, volumeNode, path: Path) -> None:
    """A 0/1 label map with the volume's geometry (LPS, as :func:`.volume.writeVolume` writes the CT)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask)
    origin, spacing, direction = lpsGeometry(ijkToRasArray(volumeNode))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)


def formatDuration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- the job -----------------------------------------------------------------------------------
class LearnJob(ProcessJob):
    """``clnet add-decoder`` for a :class:`LearnRequest` in a worker process.

    ``start()`` checks the request and exports the triples (main thread: reads MRML), then launches
    the worker. ``finish()`` returns the ``result`` event (``model``: the new version's name,
    ``model_dir``, ``anatomies``, ``validation_dice``…) or raises the run's error.
    """

    task = "training"

    def __init__(self, request: LearnRequest, **kwargs) -> None:
        super().__init__(["add-decoder"], **kwargs)
        self.request = request
        self.installName: str | None = None
        self.anatomyKind: str | None = None
        self.anatomyName: str | None = None
        self.validationDice: float | None = None
        self.loss: float | None = None

    def start(self) -> LearnJob:
        if self.cancelRequested:
            return self
        try:
            self.args = self.prepare()
        except BaseException:
            self.removeWorkDir()
            raise
        super().start()
        return self

    def prepare(self) -> list[str]:
        """Check everything, write the volumes and masks, and return the worker's arguments."""
        request = self.request
        modelDir, _manifest, self.anatomyKind, self.anatomyName = checkRequest(request)
        masks = [segmentMask(t, "training") for t in request.triples]
        heldOut = segmentMask(request.validation, "held-out") if request.validation is not None else None
        self.installName = request.installName or newVersionName(Path(modelDir).name, self.anatomyName)
        pairs = [self._export(t, m, f"train{i}") for i, (t, m) in enumerate(zip(request.triples, masks), start=1)]
        validation = self._export(request.validation, heldOut, "heldout") if heldOut is not None else None
        return addDecoderArguments(request, Path(modelDir), self.anatomyKind, self.anatomyName, pairs, validation,
                                   self.installName)

    def _export(self, triple: LearnTriple, mask: np.ndarray, stem: str) -> tuple[Path, Path, str]:
        base = f"{stem}-{slug(_name(triple.volumeNode))}"
        image = self.workDir / f"{base}.nrrd"
        label = self.workDir / f"{base}-{slug(triple.segmentName())}.label.nrrd"
        writeVolume(triple.volumeNode, image)
        writeMask(mask, triple.volumeNode, label)
        return image, label, "1"

    def progressText(self, event: dict) -> str:
        stage = str(event.get("stage", ""))
        if event.get("validation_dice") is not None:
            self.validationDice = float(event["validation_dice"])
        if event.get("loss") is not None:
            self.loss = float(event["loss"])
        parts = []
        if event.get("step") is not None and event.get("steps"):
            parts.append(f"step {int(event['step'])}/{int(event['steps'])}")
        if event.get("loss") is not None:
            parts.append(f"loss {float(event['loss']):.3f}")
        if event.get("eta_s") is not None and stage == "train":
            parts.append(f"{formatDuration(float(event['eta_s']))} left")
        if self.validationDice is not None:
            parts.append(f"validation Dice {self.validationDice:.3f}")
        text = STAGE_TEXT.get(stage, stage)
        return f"{text}: {', '.join(parts)}" if parts else text


def outcomeText(result: dict) -> str:
    """One log line for a finished learn job's result event."""
    names = ", ".join(a.get("name", "?") + (" (new)" if a.get("new") else " (corrected)" if a.get("replaces") else "")
                      for a in result.get("anatomies", []))
    line = f"Installed {result.get('model')}: learned {names or 'the anatomy'}"
    if result.get("seconds") is not None:
        line += f" in {formatDuration(float(result['seconds']))}"
    if result.get("validation_dice") is not None:
        line += f", held-out Dice {float(result['validation_dice']):.3f}"
    if result.get("base_model"):
        line += f". {result['base_model']} is still installed: pick it in the Model selector to go back"
    return line + "."


__all__ = ["DEFAULT_STEPS", "LearnJob", "LearnRequest", "LearnTriple", "addDecoderArguments", "checkRequest",
           "newVersionName", "outcomeText", "resolveAnatomy", "segmentMask", "slug"]
