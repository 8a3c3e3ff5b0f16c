"""CLNet Segmentation: segment up to 235 anatomies in CT with a CL-Net model.

This file stays thin: the logic, the MRML import, the anatomy tree and the panel live in
``CLNetSegmentationLib`` (Qt-free where possible, tested outside Slicer).
"""

from __future__ import annotations

import logging
from pathlib import Path

import qt
import slicer
from clnet.catalog import load_catalog
from clnet.errors import CancelledError, ClnetError
from CLNetSegmentationLib import CLNetSegmentationLogic, SegmentationJob, metadata
from CLNetSegmentationLib.anatomy_tree import AnatomyTreeModel
from CLNetSegmentationLib.dependencies import DependencyError, ensureDependencies
from CLNetSegmentationLib.environment import chooseAndInstallModel, modelChoices, torchSummary
from CLNetSegmentationLib.learn_panel import LearnSection
from CLNetSegmentationLib.logic import outcomeText
from CLNetSegmentationLib.model_download import ModelDownloader
from CLNetSegmentationLib.panel import PRESET_PLACEHOLDER, Panel
from CLNetSegmentationLib.qt_compat import value as qtValue
from CLNetSegmentationLib.slicer_widgets import loadSelfTest, loadTerminology, makeNodeSelector, showError
from CLNetSegmentationLib.tree_widget import AnatomyTreeWidget
from CLNetSegmentationLib.volume import findFirstCt
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

__all__ = ["CLNetSegmentation", "CLNetSegmentationLogic", "CLNetSegmentationWidget"]

log = logging.getLogger("CLNetSegmentation")


class CLNetSegmentation(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        super().__init__(parent)
        self.parent.title = "CLNet Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = list(metadata.CONTRIBUTORS)
        self.parent.helpText = metadata.HELP_TEXT
        self.parent.acknowledgementText = metadata.ACKNOWLEDGEMENT_TEXT
        # Our terminology context (all 235 anatomies) must be known before segments are shown.
        slicer.app.connect("startupCompleted()", loadTerminology)


@parameterNodeWrapper
class CLNetSegmentationParameterNode:
    """Panel settings saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    anatomies: list[str]
    model: str = ""
    device: str = "auto"
    fast: bool = False
    show3D: bool = False


class CLNetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the Lib's Panel / tree to the logic and runs segmentations in the background."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode: CLNetSegmentationParameterNode | None = None
        self._guiTag = None
        self._job: SegmentationJob | None = None

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = CLNetSegmentationLogic()
        self.panel = Panel(nodeSelector=makeNodeSelector)
        self.layout.addWidget(self.panel.widget)
        self.downloader = ModelDownloader(self.panel, lambda path: self._refreshModels(select=path), showError, self._log)
        self.tree = AnatomyTreeWidget(AnatomyTreeModel(load_catalog()), self.panel.tree,
                                      onChanged=self._onSelectionChanged)
        self.learn = LearnSection(self.logic, lambda path: self._refreshModels(select=path), showError, self._log,
                                  device=lambda: self._parameterNode.device if self._parameterNode else "auto")
        self.panel.widget.layout().insertWidget(3, self.learn.widget)  # below "Model and device"
        p = self.panel
        p.searchBox.textChanged.connect(self.tree.setFilter)
        p.selectAllButton.clicked.connect(lambda: self.tree.selectAll())
        p.selectNoneButton.clicked.connect(lambda: self.tree.selectNone())
        p.presetCombo.currentIndexChanged.connect(self._onPreset)
        p.modelCombo.currentIndexChanged.connect(self._onModelChanged)
        p.deviceCombo.currentIndexChanged.connect(self._onDeviceChanged)
        p.installFolderAction.triggered.connect(lambda: self._installModel(folder=True))
        p.installZipAction.triggered.connect(lambda: self._installModel(folder=False))
        p.show3DCheckBox.toggled.connect(self._updateShow3D)
        p.segmentButton.clicked.connect(self.onSegmentButton)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self._poll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        p.environmentLabel.setText(torchSummary())
        loadTerminology()
        self.initializeParameterNode()
        self._refreshModels()

    def cleanup(self) -> None:
        if self._job is not None:  # Slicer is closing or the module reloads: stop the worker
            self._job.discard()
            self._job = None
        self.timer.stop()
        self.downloader.discard()
        self.learn.discard()
        self.removeObservers()
        self._setParameterNode(None)

    # -- parameter node ----------------------------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self._setParameterNode(None)  # a running job cancels itself (it observes the scene too)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        node = CLNetSegmentationParameterNode(self.logic.getParameterNode())
        if node.inputVolume is None:
            node.inputVolume = findFirstCt(slicer.mrmlScene)
        self._setParameterNode(node)

    def _setParameterNode(self, node: CLNetSegmentationParameterNode | None) -> None:
        if self._parameterNode is not None and self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self._guiTag = None
        self._parameterNode = node
        if node is None:
            return
        p = self.panel
        self._guiTag = node.connectParametersToGui({
            "inputVolume": p.inputSelector, "outputSegmentation": p.outputSelector,
            "fast": p.fastCheckBox, "show3D": p.show3DCheckBox,
        })
        p.deviceCombo.setCurrentIndex(max(0, p.deviceCombo.findData(node.device)))
        p.modelCombo.setCurrentIndex(max(0, p.modelCombo.findData(node.model)))
        self.tree.setSelected(node.anatomies)
        self._onSelectionChanged(self.tree.model.selected())

    # -- anatomies and models ----------------------------------------------------------------
    def _onSelectionChanged(self, names: list[str]) -> None:
        self.panel.countLabel.setText(self.tree.model.summary())
        if self._parameterNode is not None and list(self._parameterNode.anatomies) != names:
            self._parameterNode.anatomies = names

    def _onPreset(self, index: int) -> None:
        name = self.panel.presetCombo.itemText(index)
        if name == PRESET_PLACEHOLDER:
            return
        skipped = self.tree.applyPreset(name)
        if skipped:
            self._log(f"Preset {name}: the model cannot segment {len(skipped)} of its anatomies.")
        self.panel.presetCombo.setCurrentIndex(0)

    def _modelSpec(self) -> str | None:
        return qtValue(self.panel.modelCombo, "currentData") or None

    def _refreshModels(self, select: str | None = None) -> None:
        current = select if select is not None else (self._parameterNode.model if self._parameterNode else "")
        choices = modelChoices()
        self.panel.setModelChoices(choices, current or "")
        self.learn.setModelChoices(choices, current or "")
        self._onModelChanged(0)  # stores the selection (the selector's signals were blocked)

    def _onModelChanged(self, index: int) -> None:
        if self.downloader.handleSelection(self._parameterNode.model if self._parameterNode else ""):
            return  # the "Download the official model…" entry: the selector is back on the previous model
        if self._parameterNode is not None:
            self._parameterNode.model = qtValue(self.panel.modelCombo, "currentData") or ""
        self._refreshAvailability()

    def _onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = qtValue(self.panel.deviceCombo, "currentData") or "auto"

    def _refreshAvailability(self) -> None:
        """Disable anatomies the selected model cannot segment (all enabled until it can be read)."""
        selected = self.tree.model.selected() or (list(self._parameterNode.anatomies) if self._parameterNode else [])
        try:  # the model's catalog: the packaged one plus its own "My anatomies"
            anatomies, available = self.logic.modelAnatomies(self._modelSpec())
            self.tree.model.setAnatomies(anatomies)
            self.tree.model.setAvailable([a.name for a in available], "The selected model cannot segment this anatomy.")
        except ImportError:
            self.tree.model.setAvailable(None)  # engine not installed yet: decided on first run
        except ClnetError as exc:
            self.tree.model.setAvailable([], str(exc))
            self._log(str(exc))
        self.tree.rebuild()
        self.tree.setSelected(selected)
        self.tree.setFilter(qtValue(self.panel.searchBox, "text"))
        self._onSelectionChanged(self.tree.model.selected())

    def _installModel(self, folder: bool) -> None:
        try:
            target = chooseAndInstallModel(folder)  # file dialog, dependencies, sha256 check, copy
        except (ClnetError, DependencyError) as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if target is not None:
            self._log(f"Installed model {target.name} into {target.parent}")
            self._refreshModels(select=str(target))

    # -- running -----------------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self.downloader.busy:  # the button reads "Cancel" during a download too
            return self.downloader.cancel()
        if self._job is not None:  # the button reads "Cancel"
            self._job.cancel()
            self._log("Cancelling…")
            return
        node = self._parameterNode
        if node is None or node.inputVolume is None:
            slicer.util.errorDisplay("Select an input CT volume first.")
            return
        names = self.tree.model.selected()
        if not names:
            slicer.util.errorDisplay("Select at least one anatomy (or a preset) first.")
            return
        try:
            ensureDependencies()
        except DependencyError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.panel.environmentLabel.setText(torchSummary())
        try:
            self._job = self.logic.runInBackground(
                node.inputVolume, names, outputSegmentationNode=node.outputSegmentation,
                device=node.device, fast=node.fast, model=self._modelSpec())
        except Exception as exc:  # e.g. a volume without image data
            showError(exc, "", self._log)
            return
        self._log(f"Segmenting {len(names)} anatomies in {node.inputVolume.GetName()}…")
        self.panel.setRunning(True)
        self.timer.start()

    def _poll(self) -> None:
        """QTimer slot: read the worker's new events; import its result once it has ended."""
        job = self._job
        if job is None:
            self.timer.stop()
            return
        if not job.pollInto(self.panel.setProgress, self._log):
            return
        self.timer.stop()
        self._job = None
        self.panel.setRunning(False)
        try:
            with slicer.util.WaitCursor():
                segmentation = job.finish()  # MRML import, on the main thread
        except CancelledError as exc:
            self.panel.setProgress("Cancelled", 0.0)
            self._log(f"{exc} Nothing was added to the scene.")
        except Exception as exc:
            self.panel.setProgress("Failed", 0.0)
            showError(exc, job.details, self._log)
        else:
            if self._parameterNode is not None:  # None when the user left the module meanwhile
                self._parameterNode.outputSegmentation = segmentation
            self._updateShow3D(self.panel.show3DCheckBox.isChecked(), segmentation)
            status, line = outcomeText(job.summary)
            self.panel.setProgress(status, 1.0)
            self._log(line)

    def _updateShow3D(self, show: bool, segmentation=None) -> None:
        segmentation = segmentation or (self._parameterNode.outputSegmentation if self._parameterNode else None)
        if segmentation is not None:
            (segmentation.CreateClosedSurfaceRepresentation if show else segmentation.RemoveClosedSurfaceRepresentation)()

    def _log(self, text: str) -> None:
        if text.strip():
            self.panel.appendLog(text)
            log.info(text)


def __getattr__(name: str):
    """Let "Reload and Test" find the self-test, which lives in Testing/Python."""
    if name == "CLNetSegmentationTest":
        return loadSelfTest(Path(__file__).parent)
    raise AttributeError(name)
