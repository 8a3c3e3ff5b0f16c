"""Render the module panel (tree + controls) to a PNG, from the same Panel / tree code Slicer uses.

Used by ``scripts/make_screenshot.py`` (docs image) and the widget test. Outside Slicer it runs on
PySide6; set ``QT_QPA_PLATFORM=offscreen`` where there is no display.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .anatomy_tree import AnatomyTreeModel
from .environment import torchSummary
from .panel import Panel
from .qt_compat import BINDING, qt
from .tree_widget import AnatomyTreeWidget


def ensureApplication():
    """The running QApplication, created when there is none (PySide6 only)."""
    app = qt.QApplication.instance()
    if app is None:
        if BINDING != "PySide6":
            raise RuntimeError("No Qt application is running.")
        app = qt.QApplication([])
    return app


def officialAnatomyNames(catalog) -> list[str]:
    """Anatomies the official CL-Net decoders produce: a realistic 'available' set for previews."""
    return [a.name for a in catalog if a.decoder is not None]


def buildPreview(catalog, available: Iterable[str] | None = None, preset: str | None = "Abdominal organs",
                 modelLabel: str = "CL-Net (official decoders)") -> tuple[Panel, AnatomyTreeWidget]:
    """A panel as a user sees it after a run: a preset selected, its region open."""
    panel = Panel()
    model = AnatomyTreeModel(catalog, available)
    tree = AnatomyTreeWidget(model, panel.tree,
                             onChanged=lambda names: panel.countLabel.setText(model.summary()))
    if preset:
        tree.applyPreset(preset)
        panel.presetCombo.setCurrentIndex(panel.presetCombo.findText(preset))
    panel.countLabel.setText(model.summary())
    for region in model.regions():
        if model.regionCounts(region)[0]:
            tree.regionItem(region).setExpanded(True)
            break
    panel.setModelChoices([(modelLabel, "")])
    panel.environmentLabel.setText(torchSummary())
    panel.setProgress("Done: 14 segments in 41 s", 1.0)
    for line in ("Model: CL-Net, device: auto", "Reading image", "Resampling and normalising",
                 "Running 1 decoder(s) on 54 tile(s)", "Done: 14 of 15 anatomies found."):
        panel.appendLog(line)
    return panel, tree


def savePanelScreenshot(path: str | Path, catalog, available: Iterable[str] | None = None,
                        size: tuple[int, int] = (440, 1120), **kwargs) -> Path:
    """Build the preview panel, render it off screen and save it as PNG."""
    app = ensureApplication()
    panel, _tree = buildPreview(catalog, available, **kwargs)
    panel.widget.resize(*size)
    panel.widget.show()
    app.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not panel.widget.grab().save(str(path)):
        raise RuntimeError(f"Could not save the screenshot to {path}.")
    panel.widget.close()
    return path


def saveWidgetScreenshot(widget, path: str | Path, size: tuple[int, int] = (520, 540)) -> Path:
    """Render any panel widget (e.g. the Learn section's) off screen and save it as PNG."""
    app = ensureApplication()
    widget.resize(*size)
    widget.show()
    app.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"Could not save the screenshot to {path}.")
    return path
