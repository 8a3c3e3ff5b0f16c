"""The :class:`Anatomy` record: one row of the catalog."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .terminology import Terminology

#: Naming styles for output files (:meth:`Anatomy.name_in`).
NAME_STYLES = ("catalog", "totalsegmentator")


def file_safe(name: str) -> str:
    """``name`` with each run of characters other than letters, digits, ``_`` and ``-`` made one ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "_"


@dataclass(frozen=True)
class Anatomy:
    """A segmentable structure with a stable label value.

    ``name`` is the stable identifier (the official CL-Net spelling where one exists);
    ``decoder`` is the official CL-Net decoder that owns it (``None`` for the structures
    added to reach 235); ``aliases`` are other accepted spellings (e.g. TotalSegmentator's).
    """

    label: int
    name: str
    display_name: str
    region: str
    decoder: str | None
    color: tuple[int, int, int]
    terminology: Terminology | None
    aliases: tuple[str, ...] = field(default=())
    source: str = ""

    @property
    def totalsegmentator_name(self) -> str:
        """The name TotalSegmentator gives this structure (``kidney_left``), or one in its style.

        The catalog lists TotalSegmentator's class name first among the aliases where it has one
        (``docs/catalog.md``); other anatomies get their display name in the same snake_case
        (``Middle ear (left)`` → ``middle_ear_left``).
        """
        if self.aliases:
            return self.aliases[0]
        return "_".join(re.findall(r"[a-z0-9]+", self.display_name.lower()))

    def name_in(self, style: str) -> str:
        """The anatomy's file-safe name in a naming ``style``: ``catalog`` (``Kidney_L``) or ``totalsegmentator``.

        Catalog names are file-safe already; a user anatomy's name may hold spaces and brackets,
        which become ``_`` (``Painted spine (mine)`` → ``Painted_spine_mine``).
        """
        if style == "catalog":
            return file_safe(self.name)
        if style == "totalsegmentator":
            return self.totalsegmentator_name
        raise ValueError(f"unknown naming style {style!r} (catalog or totalsegmentator)")

    def to_dict(self, available: bool | None = None) -> dict:
        d = {
            "label": self.label,
            "name": self.name,
            "display_name": self.display_name,
            "region": self.region,
            "decoder": self.decoder,
            "color": list(self.color),
            "terminology": self.terminology.to_dict() if self.terminology else None,
            "aliases": list(self.aliases),
            "source": self.source,
        }
        if available is not None:
            d["available"] = available
        return d
