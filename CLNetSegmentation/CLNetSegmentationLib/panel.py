"""The module panel's widgets, built in code so Slicer (PythonQt) and PySide6 tests share it.

Node selectors come from a factory: Slicer passes one making ``qMRMLNodeComboBox``; elsewhere a
plain QComboBox stands in. Behaviour (what a click does) lives in the module widget.
"""

from __future__ import annotations

from collections.abc import Callable

from .environment import DEVICE_CHOICES
from .model_download import DOWNLOAD_LABEL, DOWNLOAD_VALUE
from .presets import PRESETS
from .qt_compat import qt

NodeSelectorFactory = Callable[[str], object]
"""Called with "volume" or "segmentation"; returns the selector widget."""

SEGMENT_TEXT = "Segment"
CANCEL_TEXT = "Cancel"
PRESET_PLACEHOLDER = "Presets…"


def _placeholderSelector(kind: str):
    combo = qt.QComboBox()
    combo.addItem("example_ct" if kind == "volume" else "Create new segmentation on Segment")
    return combo


class Panel:
    """All widgets of the CLNet Segmentation panel (no behaviour beyond display helpers)."""

    def __init__(self, parent=None, nodeSelector: NodeSelectorFactory | None = None) -> None:
        makeSelector = nodeSelector or _placeholderSelector
        self.widget = qt.QWidget(parent) if parent is not None else qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)

        inputBox = qt.QGroupBox("Input")
        form = qt.QFormLayout(inputBox)
        self.inputSelector = makeSelector("volume")
        self.inputSelector.setToolTip("CT volume to segment (it is never modified).")
        form.addRow("Input CT:", self.inputSelector)
        layout.addWidget(inputBox)

        layout.addWidget(self._buildAnatomyBox())
        layout.addWidget(self._buildModelBox())

        outputBox = qt.QGroupBox("Output")
        form = qt.QFormLayout(outputBox)
        self.outputSelector = makeSelector("segmentation")
        self.outputSelector.setToolTip("Segmentation to fill. Re-running replaces only the segments "
                                       "CLNet made; segments you drew are kept.")
        form.addRow("Segmentation:", self.outputSelector)
        self.show3DCheckBox = qt.QCheckBox("Show 3D")
        self.show3DCheckBox.setToolTip("Build surfaces and show the result in the 3D view.")
        form.addRow("", self.show3DCheckBox)
        layout.addWidget(outputBox)

        self.segmentButton = qt.QPushButton(SEGMENT_TEXT)
        self.segmentButton.setMinimumHeight(32)
        layout.addWidget(self.segmentButton)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        self.setProgress("Ready", 0.0)
        layout.addWidget(self.progressBar)
        self.logView = qt.QPlainTextEdit()
        self.logView.setReadOnly(True)
        self.logView.setMaximumBlockCount(2000)
        self.logView.setPlaceholderText("Log")
        self.logView.setMaximumHeight(110)
        layout.addWidget(self.logView)

    def _buildAnatomyBox(self):
        box = qt.QGroupBox("Anatomies")
        layout = qt.QVBoxLayout(box)
        self.searchBox = qt.QLineEdit()
        self.searchBox.setPlaceholderText("Search anatomies (e.g. kidney, rib, left)…")
        self.searchBox.setClearButtonEnabled(True)
        layout.addWidget(self.searchBox)
        row = qt.QHBoxLayout()
        self.presetCombo = qt.QComboBox()
        self.presetCombo.addItem(PRESET_PLACEHOLDER)
        for name in PRESETS:
            self.presetCombo.addItem(name)
        self.presetCombo.setToolTip("Replace the selection with a preset (only what the model offers).")
        row.addWidget(self.presetCombo, 1)
        self.selectAllButton = qt.QPushButton("All")
        self.selectNoneButton = qt.QPushButton("None")
        row.addWidget(self.selectAllButton)
        row.addWidget(self.selectNoneButton)
        layout.addLayout(row)
        self.tree = qt.QTreeWidget()
        self.tree.setMinimumHeight(380)
        layout.addWidget(self.tree)
        self.countLabel = qt.QLabel("")
        layout.addWidget(self.countLabel)
        return box

    def _buildModelBox(self):
        box = qt.QGroupBox("Model and device")
        form = qt.QFormLayout(box)
        row = qt.QHBoxLayout()
        self.modelCombo = qt.QComboBox()
        row.addWidget(self.modelCombo, 1)
        self.installModelButton = qt.QPushButton("Install…")
        self.installModelButton.setToolTip("Install a model folder or .zip into your CLNet model folder "
                                           "(every file's sha256 is checked).")
        self.installMenu = qt.QMenu(self.installModelButton)
        self.installFolderAction = self.installMenu.addAction("From folder…")
        self.installZipAction = self.installMenu.addAction("From .zip file…")
        self.installModelButton.setMenu(self.installMenu)
        row.addWidget(self.installModelButton)
        form.addRow("Model:", row)
        self.deviceCombo = qt.QComboBox()
        for label, value in DEVICE_CHOICES:
            self.deviceCombo.addItem(label, value)
        form.addRow("Device:", self.deviceCombo)
        self.environmentLabel = qt.QLabel("")
        self.environmentLabel.setWordWrap(True)
        form.addRow("", self.environmentLabel)
        self.fastCheckBox = qt.QCheckBox("Fast mode (coarser grid, less memory)")
        form.addRow("", self.fastCheckBox)
        return box

    # -- display helpers ---------------------------------------------------------------------
    def setModelChoices(self, choices: list[tuple[str, str]], current: str = "") -> None:
        self.modelCombo.blockSignals(True)
        self.modelCombo.clear()
        for label, value in choices:
            self.modelCombo.addItem(label, value)
        self.modelCombo.addItem(DOWNLOAD_LABEL, DOWNLOAD_VALUE)  # opens the download dialog, never stays selected
        index = max(0, self.modelCombo.findData(current))
        self.modelCombo.setCurrentIndex(index)
        self.modelCombo.blockSignals(False)

    def setRunning(self, running: bool) -> None:
        """Segment ↔ Cancel; settings are locked while a run is going on."""
        self.segmentButton.setText(CANCEL_TEXT if running else SEGMENT_TEXT)
        self.segmentButton.setEnabled(True)
        for w in (self.inputSelector, self.outputSelector, self.tree, self.presetCombo, self.selectAllButton,
                  self.selectNoneButton, self.modelCombo, self.installModelButton, self.deviceCombo,
                  self.fastCheckBox):
            w.setEnabled(not running)

    def setProgress(self, text: str, fraction: float) -> None:
        self.progressBar.setValue(int(round(100 * min(max(fraction, 0.0), 1.0))))
        self.progressBar.setFormat(f"{text} (%p%)")

    def appendLog(self, text: str) -> None:
        self.logView.appendPlainText(text)
