"""The module panel's anatomy tree with real Qt (PySide6, off screen) through the ``qt`` shim.

Slicer's own ``qt`` is PythonQt and is not available here; the panel code only uses what both
bindings share, so driving it through PySide6 exercises the same code paths.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6 (PySide6-Essentials)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CLNetSegmentation"))

from clnet.catalog import load_catalog  # noqa: E402
from CLNetSegmentationLib.anatomy_tree import CHECKED, PARTIAL, UNCHECKED, AnatomyTreeModel  # noqa: E402
from CLNetSegmentationLib.panel import CANCEL_TEXT, SEGMENT_TEXT, Panel  # noqa: E402
from CLNetSegmentationLib.presets import PRESETS  # noqa: E402
from CLNetSegmentationLib.qt_compat import BINDING, qt  # noqa: E402
from CLNetSegmentationLib.screenshot import (  # noqa: E402
    ensureApplication,
    officialAnatomyNames,
    savePanelScreenshot,
)
from CLNetSegmentationLib.tree_widget import AnatomyTreeWidget  # noqa: E402

ABDOMEN = "Abdomen & Pelvis"


@pytest.fixture(scope="module")
def app():
    return ensureApplication()


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture()
def tree(app, catalog):
    """A panel's tree over the catalog where only the official decoders' anatomies are available."""
    panel = Panel()
    changes: list[list[str]] = []
    model = AnatomyTreeModel(catalog, officialAnatomyNames(catalog))
    widget = AnatomyTreeWidget(model, panel.tree, onChanged=changes.append)
    widget.changes = changes
    yield widget
    panel.widget.deleteLater()


def test_shim_uses_pyside6_here():
    assert BINDING == "PySide6"


def test_tree_shows_regions_and_every_anatomy(tree, catalog):
    top = [tree.tree.topLevelItem(i) for i in range(tree.tree.topLevelItemCount())]
    assert len(top) == len(catalog.regions())
    assert sum(item.childCount() for item in top) == len(catalog)
    assert tree.regionItem(ABDOMEN).text(0).startswith(ABDOMEN)


def test_checking_a_child_makes_the_region_partial(tree):
    tree.setChecked("Liver", True)  # same signal path as a click: itemChanged → model
    assert tree.model.selected() == ["Liver"]
    assert tree.regionItem(ABDOMEN).checkState(0) == qt.Qt.PartiallyChecked
    assert tree.model.regionState(ABDOMEN) == PARTIAL
    assert tree.changes[-1] == ["Liver"]
    tree.setChecked("Liver", False)
    assert tree.regionItem(ABDOMEN).checkState(0) == qt.Qt.Unchecked


def test_checking_a_region_checks_all_enabled_children(tree, catalog):
    tree.setRegionChecked(ABDOMEN, True)
    enabled = [a.name for a in catalog.in_region(ABDOMEN) if a.decoder is not None]
    disabled = [a.name for a in catalog.in_region(ABDOMEN) if a.decoder is None]
    assert disabled, "the test needs an unavailable anatomy in this region"
    assert tree.model.selected() == enabled
    assert tree.regionItem(ABDOMEN).checkState(0) == qt.Qt.Checked
    assert all(tree.item(n).checkState(0) == qt.Qt.Checked for n in enabled)
    assert all(tree.item(n).checkState(0) == qt.Qt.Unchecked for n in disabled)
    tree.setRegionChecked(ABDOMEN, False)
    assert tree.model.selected() == []


def test_unavailable_anatomies_are_disabled_and_cannot_be_selected(tree):
    item = tree.item("Sigmoid")  # not produced by the official decoders
    assert not item.flags() & qt.Qt.ItemIsEnabled
    assert "cannot segment" in item.toolTip(0)
    tree.setChecked("Sigmoid", True)
    assert item.checkState(0) == qt.Qt.Unchecked
    assert "Sigmoid" not in tree.model.selected()
    assert tree.model.setSelected(["Sigmoid", "Liver", "NoSuchThing"]) == ["Sigmoid", "NoSuchThing"]
    tree.selectAll()
    assert "Sigmoid" not in tree.model.selected()
    assert tree.item("Liver").checkState(0) == qt.Qt.Checked


def test_search_filter_hides_non_matching(tree):
    tree.setFilter("kidney")
    assert not tree.item("Kidney_L").isHidden() and not tree.item("Kidney_R").isHidden()
    assert tree.item("Liver").isHidden()
    assert tree.regionItem("Thorax").isHidden()
    assert tree.regionItem(ABDOMEN).isExpanded()
    tree.setFilter("left rib 1st")  # every word must match
    visible = [n for n in tree.model.namesIn("Skeleton") if not tree.item(n).isHidden()]
    assert visible == ["Bone_Rib1_L"]
    tree.setFilter("")
    assert not tree.item("Liver").isHidden() and not tree.regionItem("Thorax").isHidden()


def test_presets_select_the_right_anatomies(tree, catalog):
    skipped = tree.applyPreset("Spine")
    expected = [a.name for a in catalog if a.name in PRESETS["Spine"] and a.decoder is not None]
    assert tree.model.selected() == expected
    assert all(n.startswith("Bone_Vert_") or n in ("Bone_Sacrum", "SpinalCord") for n in expected)
    assert set(skipped) == set(PRESETS["Spine"]) - set(expected)
    tree.applyPreset("Abdominal organs")  # replaces, does not add
    assert "Bone_Vert_L1" not in tree.model.selected() and "Liver" in tree.model.selected()
    assert tree.model.regionState("Skeleton") == UNCHECKED
    tree.selectNone()
    assert tree.model.selected() == [] and tree.changes[-1] == []


def test_every_preset_names_catalog_anatomies(catalog):
    for name, anatomies in PRESETS.items():
        unknown = [a for a in anatomies if catalog.get(a) is None]
        assert not unknown, f"preset {name!r} names unknown anatomies {unknown}"


def test_model_without_qt_summary_and_states(catalog):
    model = AnatomyTreeModel(catalog, ["Liver", "spleen", "Kidney (left)"])
    assert model.summary() == "0 of 3 available anatomies selected"
    model.setRegionChecked(ABDOMEN, True)
    assert model.selected() == ["Spleen", "Kidney_L", "Liver"]
    assert model.regionState(ABDOMEN) == CHECKED
    assert model.regionState("Thorax") == UNCHECKED


def test_segment_button_turns_into_cancel(app):
    panel = Panel()
    panel.setRunning(True)
    assert panel.segmentButton.text() == CANCEL_TEXT and not panel.tree.isEnabled()
    assert panel.segmentButton.isEnabled()
    panel.setProgress("Network: tile 3/10", 0.5)
    assert panel.progressBar.value() == 50
    panel.setRunning(False)
    assert panel.segmentButton.text() == SEGMENT_TEXT and panel.tree.isEnabled()


def test_panel_screenshot(app, catalog, tmp_path):
    path = savePanelScreenshot(tmp_path / "slicer_panel.png", catalog, officialAnatomyNames(catalog))
    image = qt.QImage(str(path))
    assert not image.isNull() and image.width() >= 400 and image.height() >= 900
    assert path.stat().st_size > 20_000  # real rendered content, not an empty canvas


# -- the module file itself, with the Slicer application pieces stubbed ---------------------------
# slicer-core gives real MRML but not the app (ScriptedLoadableModule, parameterNodeWrapper,
# qMRMLNodeComboBox, message boxes). Minimal stand-ins let CLNetSegmentation.py's widget run its
# real code paths here: auto-selected CT, preset, background run, poll, import, cancel, errors.


def _stub_app(monkeypatch, slicer, scene, errors: list[str]) -> None:
    import types

    class NodeCombo(qt.QComboBox):
        def setMRMLScene(self, scene) -> None:
            pass

    class Widget:
        def __init__(self, parent=None) -> None:
            self.parent = types.SimpleNamespace(isEntered=True)
            self._root = qt.QWidget()
            self.layout = qt.QVBoxLayout(self._root)

        def setup(self) -> None:
            pass

    def wrapper(cls):
        defaults = {k: getattr(cls, k, None) for k in cls.__annotations__}

        class Params:
            def __init__(self, node) -> None:
                vars(self).update(defaults, anatomies=[], parameterNode=node)

            def connectParametersToGui(self, mapping) -> int:
                return 1

            def disconnectGui(self, tag) -> None:
                pass

        return Params

    class WaitCursor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    slm = types.SimpleNamespace(ScriptedLoadableModule=object, ScriptedLoadableModuleWidget=Widget)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper",
                        types.SimpleNamespace(parameterNodeWrapper=wrapper))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", NodeCombo, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text))
    monkeypatch.setattr(slicer.util, "WaitCursor", WaitCursor)
    monkeypatch.delitem(sys.modules, "CLNetSegmentation", raising=False)


def test_module_widget_runs_segment_and_cancel(app, monkeypatch, tmp_path, example_ct):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("needs slicer-core")
    import time

    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder
    from CLNetSegmentationLib import CLNetSegmentationLogic, clnetSegmentIds
    from CLNetSegmentationLib.segments import ensureConverterRules

    prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64), overlap=0.25,
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    model = save_random_model(tmp_path / "m", build_manifest(
        "widget-test", tiny_encoder(), {"DEC": ["Liver", "Spleen", "Kidney_L"]}, preprocessing=prep))
    monkeypatch.setenv("CLNET_MODEL", str(model))
    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "home"))
    ensureConverterRules()
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(example_ct))
    assert storage.ReadData(volume)
    errors: list[str] = []
    _stub_app(monkeypatch, slicer, scene, errors)
    monkeypatch.setattr(CLNetSegmentationLogic, "getParameterNode",
                        lambda self: scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), raising=False)
    import CLNetSegmentation

    widget = CLNetSegmentation.CLNetSegmentationWidget()
    widget.setup()
    assert widget._parameterNode.inputVolume is volume  # first CT auto-selected
    assert widget.tree.model.summary() == "0 of 3 available anatomies selected"
    assert not widget.tree.item("Stomach").flags() & qt.Qt.ItemIsEnabled  # not in this model

    widget.panel.presetCombo.setCurrentIndex(widget.panel.presetCombo.findText("Abdominal organs"))
    assert widget._parameterNode.anatomies == ["Spleen", "Kidney_L", "Liver"]

    def run_until_done() -> None:
        start = time.monotonic()
        while widget._job is not None and time.monotonic() - start < 120:
            widget._poll()
            time.sleep(0.05)

    widget.onSegmentButton()
    assert widget.panel.segmentButton.text() == CANCEL_TEXT
    run_until_done()
    assert widget.panel.segmentButton.text() == SEGMENT_TEXT and not errors
    segmentation = widget._parameterNode.outputSegmentation
    assert segmentation is not None and clnetSegmentIds(segmentation)
    assert "anatomies found" in widget.panel.progressBar.format()

    nodes = scene.GetNumberOfNodes()
    widget.onSegmentButton()
    widget.onSegmentButton()  # the button now reads Cancel
    run_until_done()
    assert widget.panel.progressBar.format().startswith("Cancelled") and scene.GetNumberOfNodes() == nodes

    widget.tree.selectNone()
    widget.onSegmentButton()
    assert errors == ["Select at least one anatomy (or a preset) first."]
    widget.cleanup()
