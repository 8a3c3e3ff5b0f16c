"""A segmentation of a volume node, computed in a worker process and imported on the main thread.

:class:`SegmentationJob` is a :class:`~.process_job.ProcessJob` running ``clnet segment`` on a copy
of the volume written to the job's folder. It also guards the scene: if the input volume or the
chosen output segmentation leaves the scene, or the scene is closed, the run is cancelled and
nothing is imported. MRML is only touched on the main thread (start, poll, finish).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .process_job import ProcessJob
from .volume import writeVolume

INPUT_FILE = "input.nrrd"
OUTPUT_DIR = "out"


class SegmentationJob(ProcessJob):
    """``clnet segment`` on ``inputVolumeNode`` in a worker; ``finish()`` imports the result.

    ``options`` are the ``clnet segment`` options (``--anatomies``, ``--device``...);
    ``importer(outputDir, resultEvent)`` runs in :meth:`finish` on the main thread and returns the
    segmentation node. ``isCancelled`` (optional) is checked at every poll.
    """

    def __init__(
        self,
        inputVolumeNode,
        outputSegmentationNode,
        options: Sequence[str],
        importer: Callable[[Path, dict], Any],
        isCancelled: Callable[[], bool] | None = None,
        **kwargs,
    ) -> None:
        self.inputVolumeNode = inputVolumeNode
        self.outputSegmentationNode = outputSegmentationNode
        self._isCancelled = isCancelled
        self._scene = inputVolumeNode.GetScene()
        self._observations: list[tuple[Any, int]] = []
        super().__init__([], onResult=self._import, **kwargs)
        self.inputPath = self.workDir / INPUT_FILE
        self.outputDir = self.workDir / OUTPUT_DIR
        self.args = ["segment", str(self.inputPath), "-o", str(self.outputDir), "--formats", "nifti",
                     "--progress", "json", *options]
        self._importer = importer
        self.summary: dict | None = None
        """After a successful finish: requested / present / missing anatomies, warnings, timings and
        settings of the run (filled by the logic's importer)."""

    def start(self) -> SegmentationJob:
        """Write the input (main thread, reads MRML), watch the scene, launch the worker."""
        if self.cancelRequested:
            return self
        try:
            writeVolume(self.inputVolumeNode, self.inputPath)
        except BaseException:
            self.removeWorkDir()
            raise
        self._watchScene()
        try:
            super().start()
        except BaseException:
            self._unwatchScene()
            raise
        return self

    def poll(self) -> bool:
        if not self.cancelRequested and self._isCancelled is not None and self._isCancelled():
            self.cancel()
        done = super().poll()
        if done:  # the worker has ended: nothing left to protect until finish() imports
            self._unwatchScene()
        return done

    def cancel(self, reason: str | None = None) -> None:
        super().cancel(reason)
        self._unwatchScene()  # a cancelled job imports nothing: no scene left to protect

    def finish(self):
        self._unwatchScene()
        for role, node in (("input volume", self.inputVolumeNode), ("output segmentation", self.outputSegmentationNode)):
            if node is not None and node.GetScene() is None and not self.cancelRequested:
                self.cancel(f"The {role} was removed from the scene, so the result was not imported.")
        return super().finish()

    def _import(self, event: dict):
        return self._importer(self.outputDir, event)

    # -- scene guard -------------------------------------------------------------------------
    def _watchScene(self) -> None:
        import weakref

        from vtkmodules.util.misc import calldata_type
        from vtkmodules.vtkCommonCore import VTK_OBJECT

        scene = self._scene
        jobRef = weakref.ref(self)  # the scene must not keep a finished job alive
        watched = [(role, node, node.GetName()) for role, node in (
            ("input volume", self.inputVolumeNode), ("output segmentation", self.outputSegmentationNode))
            if node is not None]

        @calldata_type(VTK_OBJECT)
        def onNodeRemoved(caller, event, node) -> None:
            job = jobRef()
            for role, watchedNode, name in watched:
                if job is not None and node is watchedNode:
                    job.cancel(f"The {role} '{name}' was removed from the scene, so the segmentation was "
                               "cancelled.")

        def onClose(caller, event) -> None:
            job = jobRef()
            if job is not None:
                job.cancel("The scene was closed, so the segmentation was cancelled.")

        self._observations = [
            (scene, scene.AddObserver(scene.NodeRemovedEvent, onNodeRemoved)),
            (scene, scene.AddObserver(scene.StartCloseEvent, onClose)),
        ]

    def _unwatchScene(self) -> None:
        for obj, tag in self._observations:
            obj.RemoveObserver(tag)
        self._observations = []
