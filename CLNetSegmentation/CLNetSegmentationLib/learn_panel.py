"""The panel's collapsible "Learn a new anatomy" section: examples table, anatomy, model, Train / Cancel.

Built in code on the ``qt`` shim, so Slicer (PythonQt) and the PySide6 tests run the same widgets.
Node choices are plain combo boxes filled from the scene (kept current by scene observers), so they
need nothing from the Slicer application. Training goes through
:meth:`CLNetSegmentationLogic.learnAnatomy` (the console's path) and is followed on a timer; when it
ends, ``refreshModels(path)`` switches the model selector to the new version, which reloads the tree.
"""

from __future__ import annotations

from collections.abc import Callable

from .learn import DEFAULT_STEPS, LearnJob, outcomeText
from .qt_compat import qt
from .qt_compat import value as qtValue

TRAIN_TEXT = "Train"
CANCEL_TEXT = "Cancel"
ROLLBACK_TIP = ("Training installs a NEW model version next to the base model (named <base>-<anatomy>-v2) and "
                "selects it. The base model is not changed and stays in the Model selector: pick it to roll back.")
NEW_COLOR = (230, 180, 40)


class NodeChoice:
    """A combo box of the scene's nodes of one class (node ID as item data)."""

    def __init__(self, scene, className: str, excludeClass: str | None = None) -> None:
        self.scene, self.className, self.excludeClass = scene, className, excludeClass
        self.onChanged: Callable[[], None] | None = None
        self.combo = qt.QComboBox()
        self.combo.currentIndexChanged.connect(lambda _i: self.onChanged and self.onChanged())
        self.refresh()

    def nodes(self) -> list:
        scene = self.scene
        found = [scene.GetNthNodeByClass(i, self.className) for i in range(scene.GetNumberOfNodesByClass(self.className))]
        return [n for n in found if not (self.excludeClass and n.IsA(self.excludeClass)) and not n.GetHideFromEditors()]

    def refresh(self) -> None:
        current = self.currentNode()
        self.combo.blockSignals(True)
        self.combo.clear()
        for node in self.nodes():
            self.combo.addItem(node.GetName(), node.GetID())
        self.combo.setCurrentIndex(max(0, self.combo.findData(current.GetID())) if current is not None else 0)
        self.combo.blockSignals(False)
        if self.currentNode() is not current and self.onChanged is not None:
            self.onChanged()

    def currentNode(self):
        nodeId = qtValue(self.combo, "currentData")
        return self.scene.GetNodeByID(nodeId) if nodeId else None

    def setCurrentNode(self, node) -> None:
        self.combo.setCurrentIndex(self.combo.findData(node.GetID()))


class ExampleRow:
    """One (volume, segmentation, segment) example of the table; ``heldOut`` marks the validation one."""

    def __init__(self, scene) -> None:
        self.volume = NodeChoice(scene, "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")
        self.segmentation = NodeChoice(scene, "vtkMRMLSegmentationNode")
        self.segment = qt.QComboBox()
        self.heldOut = qt.QCheckBox()
        self.heldOut.setToolTip("Held out for validation: not trained on; its Dice is shown during training.")
        self._observed = None
        self.segmentation.onChanged = self.refreshSegments
        self.refreshSegments()

    def refreshSegments(self) -> None:
        node = self.segmentation.currentNode()
        if node is not self._observed:
            self._unobserve()
            if node is not None:
                seg = node.GetSegmentation()
                self._observed = node
                self._tags = [(seg, seg.AddObserver(e, lambda *a: self.refreshSegments()))
                              for e in (seg.SegmentAdded, seg.SegmentRemoved, seg.SegmentModified)]
        current = qtValue(self.segment, "currentData")
        self.segment.blockSignals(True)
        self.segment.clear()
        if node is not None:
            seg = node.GetSegmentation()
            for segmentId in seg.GetSegmentIDs():
                self.segment.addItem(seg.GetSegment(segmentId).GetName(), segmentId)
        self.segment.setCurrentIndex(max(0, self.segment.findData(current)))
        self.segment.blockSignals(False)

    def triple(self):
        from .learn import LearnTriple

        return LearnTriple(self.volume.currentNode(), self.segmentation.currentNode(),
                           qtValue(self.segment, "currentData") or "")

    def _unobserve(self) -> None:
        for obj, tag in getattr(self, "_tags", []):
            obj.RemoveObserver(tag)
        self._tags, self._observed = [], None


class LearnSection:
    """The "Learn a new anatomy" section and its Train / Cancel flow.

    ``logic`` runs the job; ``refreshModels(path)`` refills the model selector and selects ``path``;
    ``showError(exc, details, log)`` shows one message box; ``log(text)`` writes the panel log;
    ``device()`` gives the panel's device choice.
    """

    def __init__(self, logic, refreshModels: Callable[[str], None], showError: Callable,
                 log: Callable[[str], None], scene=None, device: Callable[[], str] | None = None) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.logic, self.refreshModels, self.showError, self.log = logic, refreshModels, showError, log
        self.scene, self.device = scene, device or (lambda: "auto")
        self.job: LearnJob | None = None
        self.rows: list[ExampleRow] = []
        self.color = NEW_COLOR
        self.extraArgs: list[str] = []
        """More ``clnet add-decoder`` options for every run (scripts and tests)."""
        self._build()
        self.addRow()
        self._sceneTags = [scene.AddObserver(e, lambda *a: self.refreshNodes())
                           for e in (scene.NodeAddedEvent, scene.NodeRemovedEvent)]
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll)

    # -- widgets -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.widget = qt.QWidget()
        outer = qt.QVBoxLayout(self.widget)
        outer.setContentsMargins(0, 0, 0, 0)
        self.header = qt.QToolButton()
        self.header.setText("Learn a new anatomy")
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(qt.Qt.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Fixed)
        self.header.setToolTip("Teach the model an anatomy from segments you painted or corrected in the Segment Editor.")
        self.header.toggled.connect(self.setExpanded)
        outer.addWidget(self.header)
        self.body = qt.QGroupBox()
        outer.addWidget(self.body)
        layout = qt.QVBoxLayout(self.body)
        intro = qt.QLabel("Examples: a CT, a segmentation and the segment that shows the anatomy. Tick one row to "
                          "hold it out for validation.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.table = qt.QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Volume", "Segmentation", "Segment", "Held out"])
        self.table.horizontalHeader().setStretchLastSection(False)
        for column in range(3):
            self.table.horizontalHeader().setSectionResizeMode(column, qt.QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(90)
        self.table.setMaximumHeight(150)
        layout.addWidget(self.table)
        row = qt.QHBoxLayout()
        self.addRowButton = qt.QPushButton("Add example")
        self.removeRowButton = qt.QPushButton("Remove example")
        self.addRowButton.clicked.connect(lambda: self.addRow())
        self.removeRowButton.clicked.connect(lambda: self.removeRow())
        row.addWidget(self.addRowButton)
        row.addWidget(self.removeRowButton)
        layout.addLayout(row)
        form = qt.QFormLayout()
        layout.addLayout(form)
        self.anatomyCombo = qt.QComboBox()
        self.anatomyCombo.setEditable(True)
        self.anatomyCombo.setInsertPolicy(qt.QComboBox.NoInsert)
        self.anatomyCombo.setToolTip("A catalog anatomy: the model learns it, or corrects it when it already has it "
                                     "(only that anatomy's decoder is replaced). One of the model's own anatomies: "
                                     "it is retrained the same way. Any other name: a new anatomy, listed under "
                                     "My anatomies.")
        self._fillAnatomies()
        self.anatomyCombo.editTextChanged.connect(lambda _t: self._updateMode())
        form.addRow("Anatomy:", self.anatomyCombo)
        self.modeLabel = qt.QLabel("")
        self.modeLabel.setWordWrap(True)
        form.addRow("", self.modeLabel)
        colorRow = qt.QHBoxLayout()
        self.colorButton = qt.QPushButton("Colour…")
        self.colorButton.clicked.connect(self._chooseColor)
        colorRow.addWidget(self.colorButton)
        self.codeEdit = qt.QLineEdit()
        self.codeEdit.setPlaceholderText("Code (optional): SCT^78961009^Spleen")
        self.codeEdit.setToolTip("Terminology code SCHEME^VALUE^MEANING, written into seg.nrrd and DICOM-SEG.")
        colorRow.addWidget(self.codeEdit, 1)
        form.addRow("New anatomy:", colorRow)
        self.baseModelCombo = qt.QComboBox()
        self.baseModelCombo.setToolTip("The model to extend. " + ROLLBACK_TIP)
        self.baseModelCombo.currentIndexChanged.connect(lambda _i: self._updateMode())  # "mine" depends on it
        form.addRow("Base model:", self.baseModelCombo)
        self.stepsSpin = qt.QSpinBox()
        self.stepsSpin.setRange(1, 100000)
        self.stepsSpin.setSingleStep(50)
        self.stepsSpin.setValue(DEFAULT_STEPS)
        self.stepsSpin.setToolTip("Training steps (more: better fit, longer; a GPU is much faster than the CPU).")
        form.addRow("Steps:", self.stepsSpin)
        self.trainButton = qt.QPushButton(TRAIN_TEXT)
        self.trainButton.setToolTip(ROLLBACK_TIP)
        self.trainButton.clicked.connect(self.onTrainButton)
        layout.addWidget(self.trainButton)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        layout.addWidget(self.progressBar)
        self.setProgress("Ready", 0.0)
        self._updateColor()
        self._updateMode()
        self.setExpanded(False)

    def _fillAnatomies(self) -> None:
        from clnet.catalog import load_catalog

        self.anatomyCombo.addItem("")
        for name in sorted(a.display_name for a in load_catalog()):
            self.anatomyCombo.addItem(name)

    def setExpanded(self, expanded: bool) -> None:
        self.header.blockSignals(True)
        self.header.setChecked(expanded)
        self.header.blockSignals(False)
        self.header.setArrowType(qt.Qt.DownArrow if expanded else qt.Qt.RightArrow)
        self.body.setVisible(expanded)
        if expanded:
            self.refreshNodes()

    def addRow(self) -> ExampleRow:
        row = ExampleRow(self.scene)
        index = self.table.rowCount()
        self.table.insertRow(index)
        for column, widget in enumerate((row.volume.combo, row.segmentation.combo, row.segment)):
            self.table.setCellWidget(index, column, widget)
        self.table.setCellWidget(index, 3, row.heldOut)
        row.heldOut.toggled.connect(lambda checked, r=row: self._onHeldOut(r, checked))
        self.rows.append(row)
        return row

    def removeRow(self, index: int | None = None) -> None:
        if not self.rows:
            return
        index = self.table.currentRow() if index is None else index
        index = index if 0 <= index < len(self.rows) else len(self.rows) - 1
        self.rows.pop(index)._unobserve()
        self.table.removeRow(index)

    def _onHeldOut(self, row: ExampleRow, checked: bool) -> None:
        if checked:  # one held-out example at most
            for other in self.rows:
                if other is not row:
                    other.heldOut.setChecked(False)

    def refreshNodes(self) -> None:
        for row in self.rows:
            row.volume.refresh()
            row.segmentation.refresh()
            row.refreshSegments()

    def setModelChoices(self, choices: list[tuple[str, str]], current: str = "") -> None:
        """The model selector's list (label, value); ``current`` is preselected as the base."""
        self.baseModelCombo.clear()
        for label, value in choices:
            self.baseModelCombo.addItem(label, value)
        self.baseModelCombo.setCurrentIndex(max(0, self.baseModelCombo.findData(current)))

    def anatomyKind(self) -> str:
        """"catalog", "mine" (one of the base model's own anatomies), "new" or "" (no name yet) for the
        typed anatomy name."""
        from clnet.catalog import load_catalog

        name = qtValue(self.anatomyCombo, "currentText").strip()
        if not name:
            return ""
        if load_catalog().get(name) is not None:
            return "catalog"
        return "mine" if name.lower() in self._baseUserAnatomies() else "new"

    def _baseUserAnatomies(self) -> set[str]:
        """Lower-case names of the base model's user anatomies (empty when it cannot be read)."""
        from clnet.catalog.user import user_anatomies
        from clnet.checkpoint import read_manifest
        from clnet.registry import resolve_model

        try:
            manifest = read_manifest(resolve_model(qtValue(self.baseModelCombo, "currentData") or None))
        except Exception:  # no model yet, or a broken one: Train reports that properly
            return set()
        return {a.name.lower() for a in user_anatomies(manifest)}

    def _updateMode(self) -> None:
        kind = self.anatomyKind()
        name = qtValue(self.anatomyCombo, "currentText").strip()
        self.modeLabel.setText({"": "Pick a catalog anatomy to correct or add it, or type a new name.",
                                "catalog": f"Catalog anatomy: the new version learns {name}, or corrects it when the "
                                           "base model has it (its other anatomies stay unchanged).",
                                "mine": f"One of My anatomies: the new version retrains '{name}' (a correction; "
                                        "its label, colour and code stay).",
                                "new": f"New anatomy '{name}': shown under My anatomies, label 1000 or higher."}[kind])
        for w in (self.colorButton, self.codeEdit):
            w.setEnabled(kind == "new")

    def _chooseColor(self) -> None:
        chosen = qt.QColorDialog.getColor(qt.QColor(*self.color), self.widget, "Colour of the new anatomy")
        if chosen.isValid():
            self.color = (chosen.red(), chosen.green(), chosen.blue())
            self._updateColor()

    def _updateColor(self) -> None:
        r, g, b = self.color
        self.colorButton.setStyleSheet(f"background-color: rgb({r}, {g}, {b});")

    def setProgress(self, text: str, fraction: float) -> None:
        self.progressBar.setValue(int(round(100 * min(max(fraction, 0.0), 1.0))))
        self.progressBar.setFormat(f"{text} (%p%)")

    def setRunning(self, running: bool) -> None:
        self.trainButton.setText(CANCEL_TEXT if running else TRAIN_TEXT)
        for w in (self.table, self.addRowButton, self.removeRowButton, self.anatomyCombo, self.colorButton,
                  self.codeEdit, self.baseModelCombo, self.stepsSpin):
            w.setEnabled(not running)
        if not running:
            self._updateMode()

    # -- running -----------------------------------------------------------------------------
    def onTrainButton(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.log("Cancelling the training…")
            return
        self.start()

    def start(self) -> LearnJob | None:
        """Check the inputs and start the training job (None when something is wrong: one message box)."""
        from .dependencies import ensureDependencies

        training = [r.triple() for r in self.rows if not r.heldOut.isChecked()]
        held = [r.triple() for r in self.rows if r.heldOut.isChecked()]
        kind = self.anatomyKind()
        code = qtValue(self.codeEdit, "text").strip()
        try:
            ensureDependencies()
            self.job = self.logic.learnAnatomy(
                [t.volumeNode for t in training], [t.segmentationNode for t in training], [t.segmentId for t in training],
                name=qtValue(self.anatomyCombo, "currentText").strip(), steps=int(self.stepsSpin.value()),
                validation=(held[0].volumeNode, held[0].segmentationNode, held[0].segmentId) if held else None,
                color=self.color if kind == "new" else None, code=code if kind == "new" and code else None,
                model=qtValue(self.baseModelCombo, "currentData") or None, blocking=False, device=self.device(),
                extraArgs=self.extraArgs)
        except Exception as exc:
            self.setProgress("Not started", 0.0)
            self.showError(exc, "", self.log)
            return None
        self.log(f"Learning {self.job.anatomyName} from {len(training)} example(s) on {self.job.request.model or 'the default model'}; "
                 f"the new version will be {self.job.installName}.")
        self.setRunning(True)
        self.timer.start()
        return self.job

    def poll(self) -> None:
        """QTimer slot: progress (step, loss, ETA, validation Dice); once ended, select the new version."""
        job = self.job
        if job is None:
            self.timer.stop()
            return
        if not job.pollInto(self.setProgress, self.log):
            return
        self.timer.stop()
        self.job = None
        self.setRunning(False)
        from clnet.errors import CancelledError

        try:
            result = job.finish()
        except CancelledError as exc:
            self.setProgress("Cancelled", 0.0)
            self.log(f"{exc} No model was installed.")
            return
        except Exception as exc:
            self.setProgress("Failed", 0.0)
            self.showError(exc, job.details, self.log)
            return
        dice = result.get("validation_dice")
        self.setProgress(f"Installed {result.get('model')}" + (f", held-out Dice {dice:.3f}" if dice is not None else ""), 1.0)
        self.log(outcomeText(result))
        self.refreshModels(_choiceFor(result))

    def discard(self) -> None:
        """Stop a running job and the observers (module cleanup)."""
        self.timer.stop()
        if self.job is not None:
            self.job.discard()
            self.job = None
        for tag in self._sceneTags:
            self.scene.RemoveObserver(tag)
        self._sceneTags = []
        for row in self.rows:
            row._unobserve()


def _choiceFor(result: dict) -> str:
    """The model selector's value for the installed version (its folder as ``modelChoices`` lists it)."""
    from pathlib import Path

    from .environment import modelChoices

    target = Path(str(result.get("model_dir") or "")).resolve()
    for _label, choice in modelChoices():
        if choice and Path(choice).resolve() == target:
            return choice
    return str(result.get("model_dir") or "")


__all__ = ["CANCEL_TEXT", "ROLLBACK_TIP", "TRAIN_TEXT", "ExampleRow", "LearnSection", "NodeChoice"]
