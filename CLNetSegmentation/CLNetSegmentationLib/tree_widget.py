"""Thin Qt adapter: shows an :class:`AnatomyTreeModel` in a QTreeWidget and forwards clicks.

Regions are tristate parents, anatomies checkable children; unavailable anatomies are disabled
with a tooltip. The model decides every state; this class only mirrors it.
"""

from __future__ import annotations

from collections.abc import Callable

from .anatomy_tree import CHECKED, PARTIAL, AnatomyTreeModel
from .qt_compat import qt

_REGION, _ANATOMY = "region", "anatomy"


def _qtState(state: int):
    return {CHECKED: qt.Qt.Checked, PARTIAL: qt.Qt.PartiallyChecked}.get(state, qt.Qt.Unchecked)


class AnatomyTreeWidget:
    """Keeps ``tree`` (a QTreeWidget) in sync with ``model``; calls ``onChanged(selected)``."""

    def __init__(self, model: AnatomyTreeModel, tree=None,
                 onChanged: Callable[[list[str]], None] | None = None) -> None:
        self.model = model
        self.tree = tree if tree is not None else qt.QTreeWidget()
        self.onChanged = onChanged
        self.tree.setHeaderHidden(True)
        self.tree.setUniformRowHeights(True)
        self._regionItems: dict[str, object] = {}
        self._anatomyItems: dict[str, object] = {}
        self.tree.itemChanged.connect(self._onItemChanged)
        self.rebuild()

    # -- building ----------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Recreate all items (after the model's anatomies or availability changed)."""
        self.tree.blockSignals(True)
        try:
            self.tree.clear()
            self._regionItems, self._anatomyItems = {}, {}
            for region in self.model.regions():
                regionItem = qt.QTreeWidgetItem(self.tree)
                regionItem.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
                self._register(regionItem, _REGION, region)
                self._regionItems[region] = regionItem
                for name in self.model.namesIn(region):
                    item = qt.QTreeWidgetItem(regionItem)
                    entry = self.model.entry(name)
                    item.setText(0, entry.displayName)
                    if self.model.isAvailable(name):
                        item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
                        item.setToolTip(0, f"{entry.displayName} ({name})")
                    else:
                        item.setFlags(qt.Qt.ItemIsUserCheckable)  # shown, but disabled
                        item.setToolTip(0, f"{entry.displayName} ({name}): {self.model.unavailableReason}")
                    self._register(item, _ANATOMY, name)
                    self._anatomyItems[name] = item
        finally:
            self.tree.blockSignals(False)
        self.refresh(notify=False)

    def _register(self, item, kind: str, key: str) -> None:
        item.setData(0, qt.Qt.UserRole, f"{kind}:{key}")

    def _keyOf(self, item) -> tuple[str, str] | None:
        data = item.data(0, qt.Qt.UserRole)
        if not data:
            return None
        kind, _, key = str(data).partition(":")
        return kind, key

    # -- syncing -----------------------------------------------------------------------------
    def refresh(self, notify: bool = True) -> None:
        """Copy check states and region counts from the model into the items."""
        self.tree.blockSignals(True)
        try:
            for region, regionItem in self._regionItems.items():
                checked, available = self.model.regionCounts(region)
                regionItem.setText(0, f"{region}  ({checked}/{available})")
                regionItem.setCheckState(0, _qtState(self.model.regionState(region)))
                regionItem.setDisabled(available == 0)
            for name, item in self._anatomyItems.items():
                item.setCheckState(0, _qtState(CHECKED if self.model.isChecked(name) else 0))
        finally:
            self.tree.blockSignals(False)
        if notify and self.onChanged is not None:
            self.onChanged(self.model.selected())

    def _onItemChanged(self, item, column: int) -> None:
        key = self._keyOf(item)
        if key is None:
            return
        kind, name = key
        checked = item.checkState(0) != qt.Qt.Unchecked
        if kind == _REGION:
            # Qt turns a partially checked region into checked on click: select all available.
            self.model.setRegionChecked(name, checked)
        else:
            self.model.setChecked(name, checked)
        self.refresh()

    # -- commands ----------------------------------------------------------------------------
    def setFilter(self, text: str) -> None:
        """Hide anatomies not matching ``text`` and regions left empty; expand on a filter."""
        visible = self.model.visibleNames(text) if text.strip() else None
        for region, regionItem in self._regionItems.items():
            shown = 0
            for name in self.model.namesIn(region):
                hide = visible is not None and name not in visible
                self._anatomyItems[name].setHidden(hide)
                shown += not hide
            regionItem.setHidden(shown == 0)
            regionItem.setExpanded(visible is not None and shown > 0)

    def setChecked(self, name: str, checked: bool) -> None:
        """Programmatic click on one anatomy (goes through the same path as a user click)."""
        self._anatomyItems[name].setCheckState(0, _qtState(CHECKED if checked else 0))

    def setRegionChecked(self, region: str, checked: bool) -> None:
        self._regionItems[region].setCheckState(0, _qtState(CHECKED if checked else 0))

    def applyPreset(self, preset: str) -> list[str]:
        skipped = self.model.applyPreset(preset)
        self.refresh()
        return skipped

    def selectAll(self) -> None:
        self.model.selectAll()
        self.refresh()

    def selectNone(self) -> None:
        self.model.selectNone()
        self.refresh()

    def setSelected(self, names) -> list[str]:
        skipped = self.model.setSelected(names)
        self.refresh(notify=False)
        return skipped

    def item(self, name: str):
        """The QTreeWidgetItem of an anatomy (tests, expanding)."""
        return self._anatomyItems[name]

    def regionItem(self, region: str):
        return self._regionItems[region]
