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


@pytest.fixture()
def module_widget(app, monkeypatch, tmp_path, example_ct):
    """The real module widget on a real MRML scene holding the example CT, with a tiny random model."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("needs slicer-core")
    import types

    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder
    from CLNetSegmentationLib import CLNetSegmentationLogic
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
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        terminologies=types.SimpleNamespace(logic=lambda: terminologies)), raising=False)
    monkeypatch.setattr(CLNetSegmentationLogic, "getParameterNode",
                        lambda self: scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), raising=False)
    import CLNetSegmentation

    widget = CLNetSegmentation.CLNetSegmentationWidget()
    widget.setup()
    widget.test = types.SimpleNamespace(scene=scene, volume=volume, errors=errors, terminologies=terminologies)
    yield widget
    widget.cleanup()


def run_until_done(widget, timeout: float = 120, during=None) -> None:
    import time

    start = time.monotonic()
    while widget._job is not None and time.monotonic() - start < timeout:
        if during is not None:
            during(widget._job)
        widget._poll()
        time.sleep(0.05)
    assert widget._job is None, "the run did not end"


def wait_for_tiles(widget, timeout: float = 120) -> None:
    import time

    start = time.monotonic()
    while not widget._job.progress[0].startswith("Network"):
        widget._poll()
        assert widget._job is not None and time.monotonic() - start < timeout
        time.sleep(0.05)


def test_module_widget_runs_segment_and_cancel(module_widget):
    from CLNetSegmentationLib import clnetSegmentIds

    widget, t = module_widget, module_widget.test
    assert widget._parameterNode.inputVolume is t.volume  # first CT auto-selected
    assert widget.tree.model.summary() == "0 of 3 available anatomies selected"
    assert not widget.tree.item("Stomach").flags() & qt.Qt.ItemIsEnabled  # not in this model
    assert t.terminologies.IsTerminologyContextLoaded("Segmentation category and type - CLNet Segmentation")

    widget.panel.presetCombo.setCurrentIndex(widget.panel.presetCombo.findText("Abdominal organs"))
    assert widget._parameterNode.anatomies == ["Spleen", "Kidney_L", "Liver"]

    widget.onSegmentButton()
    assert widget.panel.segmentButton.text() == CANCEL_TEXT
    assert widget._job.pid is not None and widget._job.pid != os.getpid()  # a worker process
    run_until_done(widget)
    assert widget.panel.segmentButton.text() == SEGMENT_TEXT and not t.errors
    segmentation = widget._parameterNode.outputSegmentation
    assert segmentation is not None and clnetSegmentIds(segmentation)
    assert "anatomies found" in widget.panel.progressBar.format()

    nodes = t.scene.GetNumberOfNodes()
    widget.onSegmentButton()
    widget.onSegmentButton()  # the button now reads Cancel
    run_until_done(widget)
    assert widget.panel.progressBar.format().startswith("Cancelled") and t.scene.GetNumberOfNodes() == nodes

    widget.tree.selectNone()
    widget.onSegmentButton()
    assert t.errors == ["Select at least one anatomy (or a preset) first."]


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_module_widget_reports_a_killed_worker_and_stays_usable(module_widget):
    import signal

    widget, t = module_widget, module_widget.test
    widget.tree.setSelected(["Liver"])
    nodes = t.scene.GetNumberOfNodes()
    widget.onSegmentButton()
    wait_for_tiles(widget)
    os.kill(widget._job.pid, signal.SIGKILL)  # what the out-of-memory killer does
    run_until_done(widget)
    assert len(t.errors) == 1 and "memory" in t.errors[0]
    assert widget.panel.progressBar.format().startswith("Failed")
    assert widget.panel.segmentButton.text() == SEGMENT_TEXT and t.scene.GetNumberOfNodes() == nodes
    widget.onSegmentButton()  # and it runs again
    run_until_done(widget)
    assert len(t.errors) == 1 and "anatomies found" in widget.panel.progressBar.format()


def test_module_widget_cancels_when_the_input_is_removed(module_widget):
    widget, t = module_widget, module_widget.test
    widget.tree.setSelected(["Liver"])
    widget.onSegmentButton()
    wait_for_tiles(widget)
    t.scene.RemoveNode(t.volume)
    run_until_done(widget)
    assert not t.errors and widget.panel.progressBar.format().startswith("Cancelled")
    assert "removed from the scene" in widget.panel.logView.toPlainText()
    assert t.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


@pytest.mark.parametrize("case", ["declined", "pip fails", "no PyTorch extension", "no network", "pip_ensure fails"])
def test_dependency_problems_become_one_message(module_widget, monkeypatch, case):
    import subprocess

    import slicer
    from CLNetSegmentationLib import dependencies

    widget, t = module_widget, module_widget.test
    widget.tree.setSelected(["Liver"])
    monkeypatch.setattr(dependencies, "missingPackages", lambda: ["monai"])
    monkeypatch.setattr(dependencies, "torchInstalled", lambda: case != "no PyTorch extension")
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: case != "declined", raising=False)

    def pip_install(requirements, **kwargs):
        if case == "no network":
            raise OSError("Temporary failure in name resolution")
        raise subprocess.CalledProcessError(1, ["pip", "install", requirements])

    calls = []

    def pip_ensure(requirements, **kwargs):  # Slicer 5.12's slicer.packaging.pip_ensure
        calls.append(kwargs)
        raise subprocess.CalledProcessError(2, ["pip", "install", *requirements])

    monkeypatch.setattr(dependencies, "_pipEnsure", lambda: pip_ensure if case == "pip_ensure fails" else None)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kw: qt.QProgressDialog(), raising=False)
    monkeypatch.setattr(slicer, "app", qt.QApplication.instance(), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails: the extension is missing
    widget.onSegmentButton()
    assert widget._job is None and len(t.errors) == 1
    expected = {"declined": "Press Segment again and accept", "pip fails": "pip exit code 1",
                "no PyTorch extension": "Install the PyTorch extension", "no network": "internet connection",
                "pip_ensure fails": "pip exit code 2"}[case]
    if case == "pip_ensure fails":  # asked once already: no second prompt, and never torch from PyPI
        assert calls == [{"skip_packages": ["torch"], "prompt_install": False, "requester": "CLNet Segmentation"}]
    assert expected in t.errors[0]
    assert "slicer.util.pip_install('monai>=1.3 --no-deps')" in t.errors[0] or case == "no PyTorch extension"


def test_module_widget_installs_a_model(module_widget, monkeypatch, tmp_path):
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder
    from CLNetSegmentationLib.qt_compat import value

    widget, t = module_widget, module_widget.test
    prep = Preprocessing(spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64), overlap=0.25,
                         normalization=Normalization(-1024, 1500, -300.0, 500.0))
    source = save_random_model(tmp_path / "second", build_manifest(
        "second", tiny_encoder(), {"DEC": ["Stomach", "Pancreas"]}, preprocessing=prep))
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *args: str(source)))
    widget._installModel(folder=True)
    assert not t.errors
    installed = value(widget.panel.modelCombo, "currentData")
    assert installed and Path(installed).parent == tmp_path / "home" / "models"
    assert widget.tree.item("Stomach").flags() & qt.Qt.ItemIsEnabled  # the new model's anatomies
    assert not widget.tree.item("Liver").flags() & qt.Qt.ItemIsEnabled
