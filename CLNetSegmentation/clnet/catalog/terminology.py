"""Coded terminology (DICOM / SNOMED-CT) attached to each anatomy.

One place turns a code triplet into the forms other tools read: Slicer's terminology string
(``.seg.nrrd`` and segmentation nodes) and DICOM-SEG code items (highdicom).
"""

from __future__ import annotations

from dataclasses import dataclass

# Slicer's default terminology context names; Slicer matches segments to its lists by these.
SLICER_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator (e.g. ``SCT``), code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def to_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Code:
        return cls(d["scheme"], d["value"], d["meaning"])


@dataclass(frozen=True)
class Terminology:
    """Segmented property category, type and optional type modifier (laterality)."""

    category: Code
    type: Code
    modifier: Code | None = None

    def to_slicer_string(self) -> str:
        """Slicer's ``~``-separated terminology entry (category/type context; no anatomic region)."""
        modifier = self.modifier.to_slicer() if self.modifier else "^^"
        return "~".join(
            [
                SLICER_CATEGORY_TYPE_CONTEXT,
                self.category.to_slicer(),
                self.type.to_slicer(),
                modifier,
                SLICER_ANATOMIC_CONTEXT,
                "^^",
                "^^",
            ]
        )

    def to_dict(self) -> dict:
        return {
            "category": self.category.to_dict(),
            "type": self.type.to_dict(),
            "modifier": self.modifier.to_dict() if self.modifier else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Terminology:
        mod = d.get("modifier")
        return cls(Code.from_dict(d["category"]), Code.from_dict(d["type"]), Code.from_dict(mod) if mod else None)
