"""The Slicer module's "Download the official CL-Net model…" against the loopback model hub.

The download runs through the real worker process (``python -m clnet.worker models download
official``), which reaches the stand-in hub (``hub_server.FakeHub``) through ``HF_ENDPOINT``; the
module's process reads only the JSON events, as in Slicer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import FakeHub, closed_port
from official_release import build_release
from test_slicer_widget import app, module_widget  # noqa: F401 (fixtures)

HEADS = ["MERGED_ABDOMEN", "Chest_LNS"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    hub = FakeHub(build_release(tmp_path_factory.mktemp("hubrepo") / "repo", HEADS)).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub_env(server, monkeypatch, tmp_path):
    """The worker's environment: the loopback hub, a fresh hub cache and clnet home."""
    server.reset()
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "clnet"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "clnet"


def test_logic_downloads_installs_and_lists_the_official_model(hub_env):
    from clnet.registry import default_model_name, list_models
    from CLNetSegmentationLib import CLNetSegmentationLogic
    from CLNetSegmentationLib.environment import modelChoices
    from CLNetSegmentationLib.model_download import listHeads

    heads, common = listHeads()
    assert [h["head"] for h in heads if h["available"]] == HEADS and common > 0
    assert all(h["size"] > 0 for h in heads if h["available"])

    stages: list[str] = []
    result = CLNetSegmentationLogic().downloadOfficialModel(heads=["abdomen"],
                                                            progressCallback=lambda s, f: stages.append(s))
    assert result["model"] == "clnet-official" and result["heads"] == ["MERGED_ABDOMEN"]
    assert Path(result["path"]).parent == hub_env / "models" and result["downloaded_bytes"] > 0
    assert stages, "no progress was reported"
    assert default_model_name() == "clnet-official"
    installed = {name: path for name, path, _m in list_models()}
    assert Path(installed["clnet-official"]) == Path(result["path"])
    assert result["path"] in [value for _label, value in modelChoices()]


def test_logic_download_error_is_a_clear_clnet_error(hub_env, monkeypatch):
    from clnet.errors import ClnetError
    from CLNetSegmentationLib import CLNetSegmentationLogic

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ClnetError) as info:
        CLNetSegmentationLogic().downloadOfficialModel(heads=["abdomen"])
    assert "--from" in f"{info.value} {getattr(info.value, 'hint', '')}"
    assert not (hub_env / "models" / "clnet-official").exists()


# --------------------------------------------------------------------------- the panel
def select_download_entry(widget) -> None:
    from CLNetSegmentationLib.model_download import DOWNLOAD_LABEL

    combo = widget.panel.modelCombo
    index = combo.findText(DOWNLOAD_LABEL)
    assert index >= 0, "the selector has no download entry"
    combo.setCurrentIndex(index)  # what a click does: currentIndexChanged → the widget


def current_model(widget) -> str:
    from CLNetSegmentationLib.qt_compat import value

    return value(widget.panel.modelCombo, "currentData")


def run_download(widget, timeout: float = 300, during=None) -> None:
    import time

    start = time.monotonic()
    while widget.downloader.busy and time.monotonic() - start < timeout:
        if during is not None:
            during(widget.downloader.job)
        widget.downloader.poll()
        time.sleep(0.05)
    assert not widget.downloader.busy, "the download did not end"


def test_panel_dialog_cancel_and_hub_error_keep_the_previous_model(module_widget, hub_env, monkeypatch):  # noqa: F811
    from CLNetSegmentationLib.model_download import DOWNLOAD_VALUE, HeadsDialog

    widget, t = module_widget, module_widget.test
    previous = current_model(widget)
    assert widget.panel.modelCombo.findData(DOWNLOAD_VALUE) == widget.panel.modelCombo.count() - 1
    shown: list[HeadsDialog] = []

    def cancel_dialog(self):
        shown.append(self)
        return None

    monkeypatch.setattr(HeadsDialog, "run", cancel_dialog)
    select_download_entry(widget)
    assert len(shown) == 1 and current_model(widget) == previous and not widget.downloader.busy
    dialog = shown[0]
    assert list(dialog.checkBoxes) == [h["head"] for h in dialog.heads]
    assert [h for h, box in dialog.checkBoxes.items() if box.isEnabled()] == HEADS
    assert dialog.chosen() == HEADS and dialog.okButton.isEnabled()
    dialog.checkBoxes["Chest_LNS"].setChecked(False)
    assert dialog.chosen() == ["MERGED_ABDOMEN"] and "Download:" in dialog.totalLabel.text()
    for box in dialog.checkBoxes.values():
        box.setChecked(False)
    assert not dialog.okButton.isEnabled()
    assert widget._parameterNode.model == (previous or "") and not t.errors

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # the hub cannot be reached
    select_download_entry(widget)
    assert len(shown) == 1 and len(t.errors) == 1 and "--from" in t.errors[0]
    assert current_model(widget) == previous and widget._parameterNode.model == (previous or "")
    assert widget.panel.progressBar.format().startswith("Failed")


def test_panel_download_cancel_then_success_selects_the_new_model(module_widget, hub_env, monkeypatch):  # noqa: F811
    from CLNetSegmentationLib.model_download import HeadsDialog
    from CLNetSegmentationLib.panel import CANCEL_TEXT, SEGMENT_TEXT
    from CLNetSegmentationLib.qt_compat import qt

    widget, t = module_widget, module_widget.test
    previous = current_model(widget)
    monkeypatch.setattr(HeadsDialog, "run", lambda self: ["MERGED_ABDOMEN"])
    select_download_entry(widget)
    assert widget.downloader.busy and current_model(widget) == previous
    assert widget.panel.segmentButton.text() == CANCEL_TEXT
    widget.onSegmentButton()  # Cancel
    run_download(widget)
    assert widget.panel.progressBar.format().startswith("Cancelled") and not t.errors
    assert current_model(widget) == previous and widget.panel.segmentButton.text() == SEGMENT_TEXT
    assert not (hub_env / "models" / "clnet-official").exists()

    select_download_entry(widget)
    run_download(widget)
    assert not t.errors, t.errors
    installed = hub_env / "models" / "clnet-official"
    assert (installed / "manifest.json").is_file()
    assert Path(current_model(widget)) == installed and widget._parameterNode.model == current_model(widget)
    assert widget.panel.progressBar.format().startswith("Installed")
    available = {a.name for a in widget.logic.availableAnatomies(str(installed))}
    assert "Stomach" in available  # not in the widget's test model, in the abdomen head
    assert widget.tree.item("Stomach").flags() & qt.Qt.ItemIsEnabled  # the tree follows the new model
    assert not widget.tree.item("Sigmoid").flags() & qt.Qt.ItemIsEnabled
