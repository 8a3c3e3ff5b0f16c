"""The :class:`Anatomy` record: one row of the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from .terminology import Terminology


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
