"""The anatomy selection tree as plain data: regions → anatomies, check states, filter, presets.

The Qt tree (:mod:`.tree_widget`) only mirrors this model, so all selection rules live here and
are testable without Qt. Anatomies the loaded model cannot segment are *unavailable*: they are
shown but can never be selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .presets import PRESETS

# Same numbers as Qt.CheckState, so adapters can map them one to one.
UNCHECKED, PARTIAL, CHECKED = 0, 1, 2


@dataclass(frozen=True)
class Entry:
    """What the tree needs to know about one anatomy."""

    name: str
    displayName: str
    region: str
    searchText: str

    @classmethod
    def fromAnatomy(cls, anatomy) -> Entry:
        words = [anatomy.name, anatomy.display_name, anatomy.region, *getattr(anatomy, "aliases", ())]
        return cls(anatomy.name, anatomy.display_name, anatomy.region, " ".join(words).lower())


class AnatomyTreeModel:
    """Selection state of the anatomy tree."""

    def __init__(self, anatomies: Iterable, available: Iterable[str] | None = None,
                 presets: dict[str, Sequence[str]] | None = None) -> None:
        self.presets = dict(PRESETS if presets is None else presets)
        self._checked: set[str] = set()
        self.unavailableReason = "The selected model cannot segment this anatomy."
        self.setAnatomies(anatomies)
        self.setAvailable(available)

    def setAnatomies(self, anatomies: Iterable) -> None:
        """Replace the anatomies shown (a model's catalog: the packaged one plus its "My anatomies"
        region). Checked anatomies that remain stay checked."""
        self._entries: dict[str, Entry] = {}
        self._regions: dict[str, list[str]] = {}
        for anatomy in anatomies:
            entry = Entry.fromAnatomy(anatomy)
            self._entries[entry.name] = entry
            self._regions.setdefault(entry.region, []).append(entry.name)
        self._lookup = {n.lower(): n for n in self._entries}
        self._lookup.update({e.displayName.lower(): e.name for e in self._entries.values()})
        self._checked &= set(self._entries)
        self._available = getattr(self, "_available", set(self._entries)) & set(self._entries)

    # -- structure ---------------------------------------------------------------------------
    def regions(self) -> list[str]:
        return list(self._regions)

    def namesIn(self, region: str) -> list[str]:
        return list(self._regions[region])

    def entry(self, name: str) -> Entry:
        return self._entries[name]

    def canonical(self, name: str) -> str | None:
        """Catalog name for a name or display name (case-insensitive), None if unknown."""
        return self._lookup.get(name.strip().lower())

    # -- availability ------------------------------------------------------------------------
    def setAvailable(self, names: Iterable[str] | None, reason: str | None = None) -> None:
        """Which anatomies the model offers (None: all). Unavailable ones are unchecked."""
        if names is None:
            self._available = set(self._entries)
        else:
            self._available = {c for c in (self.canonical(n) for n in names) if c}
        if reason:
            self.unavailableReason = reason
        self._checked &= self._available

    def isAvailable(self, name: str) -> bool:
        return name in self._available

    # -- checking ----------------------------------------------------------------------------
    def isChecked(self, name: str) -> bool:
        return name in self._checked

    def setChecked(self, name: str, checked: bool) -> bool:
        """Check or uncheck one anatomy; returns False (and changes nothing) if unavailable."""
        if checked and name not in self._available:
            return False
        (self._checked.add if checked else self._checked.discard)(name)
        return True

    def regionState(self, region: str) -> int:
        """CHECKED when every available anatomy of the region is checked, PARTIAL when some are."""
        available = [n for n in self._regions[region] if n in self._available]
        count = sum(n in self._checked for n in available)
        if count == 0:
            return UNCHECKED
        return CHECKED if count == len(available) else PARTIAL

    def setRegionChecked(self, region: str, checked: bool) -> None:
        """(Un)check every available anatomy of the region."""
        for name in self._regions[region]:
            self.setChecked(name, checked)

    def regionCounts(self, region: str) -> tuple[int, int]:
        """(checked, available) in a region."""
        names = self._regions[region]
        return sum(n in self._checked for n in names), sum(n in self._available for n in names)

    def selectAll(self) -> None:
        self._checked = set(self._available)

    def selectNone(self) -> None:
        self._checked = set()

    def applyPreset(self, preset: str, replace: bool = True) -> list[str]:
        """Select a preset's available anatomies (replacing the selection by default).

        Returns the preset names the model cannot segment (left unselected).
        """
        if replace:
            self.selectNone()
        return self.setSelected(self.presets[preset], replace=False)

    def selected(self) -> list[str]:
        """Checked anatomies in catalog order."""
        return [n for n in self._entries if n in self._checked]

    def setSelected(self, names: Iterable[str], replace: bool = True) -> list[str]:
        """Check exactly ``names`` (or add them); returns the ones unknown or unavailable."""
        if replace:
            self.selectNone()
        skipped = []
        for name in names:
            canonical = self.canonical(name)
            if canonical is None or not self.setChecked(canonical, True):
                skipped.append(name)
        return skipped

    def summary(self) -> str:
        return f"{len(self._checked)} of {len(self._available)} available anatomies selected"

    # -- filtering ---------------------------------------------------------------------------
    def matches(self, name: str, text: str) -> bool:
        """Does ``text`` (every word, case-insensitive) occur in the anatomy's names or region?"""
        words = text.lower().split()
        haystack = self._entries[name].searchText
        return all(w in haystack for w in words)

    def visibleNames(self, text: str) -> set[str]:
        return {n for n in self._entries if self.matches(n, text)}
