"""Coded terminology (DICOM / SNOMED-CT) attached to each anatomy.

One place turns a code triplet into the forms other tools read: Slicer's terminology string
(``.seg.nrrd`` and segmentation nodes), Slicer's terminology context file (``.term.json``) and
DICOM-SEG code items (highdicom).

Slicer matches a segment to a list by the context name in its terminology string. Its own
"General Anatomy list" holds only about 50 of the catalog's coded anatomies, so clnet ships its own
context, :data:`TERMINOLOGY_FILE`, holding all 235 with their codes and colours; the Slicer module
loads it at start-up. The 42 anatomies without a SNOMED-CT code (lymph-node stations and a few
others) get a private code (:data:`PRIVATE_SCHEME`, DICOM PS3.16 section 8.2) so that they too are
found in the list. User-defined anatomies (``source == "user"``, labels from 1000, see
:mod:`.user`) without a code of their own get one in :data:`USER_PRIVATE_SCHEME`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .anatomy import Anatomy

SLICER_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - CLNet Segmentation"
"""The context name of :data:`TERMINOLOGY_FILE`, used in every terminology string clnet writes."""
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
PRIVATE_SCHEME = "99CLNET"
"""Coding scheme designator of the private codes (value: catalog name; meaning: display name)."""
USER_PRIVATE_SCHEME = "99CLNETU"
"""Private scheme of user anatomies without a code (value ``user-<label>``; meaning: the name).

The value is local to one model (another model may give label 1000 to another structure); the
meaning says what it is. Users who exchange results give the anatomy a standard code instead.
"""
TERMINOLOGY_FILE = Path(__file__).resolve().with_name("SegmentationCategoryTypeModifier-CLNet.term.json")
TERMINOLOGY_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"
"""The schema URL Slicer's Terminologies module requires in a terminology context file."""


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

    def to_slicer_string(self, context: str = SLICER_CATEGORY_TYPE_CONTEXT) -> str:
        """Slicer's ``~``-separated terminology entry (category/type context; no anatomic region)."""
        modifier = self.modifier.to_slicer() if self.modifier else "^^"
        return "~".join(
            [
                context,
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


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")


def slicer_terminology(anatomy: Anatomy) -> Terminology:
    """The terminology every output writes for ``anatomy`` (seg.nrrd, DICOM-SEG, Slicer segments).

    Its own code when it has one; else a private code: :data:`PRIVATE_SCHEME` for a catalog
    anatomy (value: catalog name, as in :data:`TERMINOLOGY_FILE`), :data:`USER_PRIVATE_SCHEME` for
    a user-defined one (value ``user-<label>``, meaning: its name).
    """
    if anatomy.terminology is not None:
        return anatomy.terminology
    if anatomy.source == "user":
        return Terminology(ANATOMICAL_STRUCTURE,
                           Code(USER_PRIVATE_SCHEME, f"user-{anatomy.label}", anatomy.display_name))
    return Terminology(ANATOMICAL_STRUCTURE, Code(PRIVATE_SCHEME, anatomy.name, anatomy.display_name))


def private_schemes(terminologies: Iterable[Terminology]) -> list[str]:
    """The private coding schemes (designators starting ``99``, DICOM PS3.16 8.2) that ``terminologies`` use."""
    found = {c.scheme for t in terminologies for c in (t.category, t.type, t.modifier) if c is not None}
    return sorted(s for s in found if s.startswith("99"))


def _code_fields(code: Code) -> dict[str, Any]:
    fields: dict[str, Any] = {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme,
                              "CodeValue": code.value}
    if code.scheme == "SCT":
        fields["SNOMEDCTConceptID"] = code.value
    return fields


def build_slicer_terminology(anatomies: Iterable[Anatomy]) -> dict[str, Any]:
    """A Slicer terminology context (the ``.term.json`` format) listing ``anatomies``.

    One Type per type code; anatomies that share a type code and differ by laterality (or
    superior/middle/inferior) are that Type's Modifiers. Each entry carries the anatomy's colour
    and its display name as ``3dSlicerLabel``, which Slicer uses as the segment name.
    """
    categories: dict[Code, dict[Code, list[Anatomy]]] = {}
    for anatomy in anatomies:
        term = slicer_terminology(anatomy)
        categories.setdefault(term.category, {}).setdefault(term.type, []).append(anatomy)
    category_list = []
    for category, types in categories.items():
        type_list = []
        for type_code, members in types.items():
            entry = _code_fields(type_code)
            with_modifier = [a for a in members if slicer_terminology(a).modifier is not None]
            if with_modifier and len(with_modifier) != len(members):
                names = ", ".join(a.name for a in members)
                raise ValueError(f"Type {type_code.to_slicer()} is used with and without a modifier ({names}).")
            if with_modifier:
                entry["Modifier"] = [
                    {**_code_fields(slicer_terminology(a).modifier), "recommendedDisplayRGBValue": list(a.color),
                     "3dSlicerLabel": a.display_name}
                    for a in members
                ]
            else:
                if len(members) != 1:
                    raise ValueError(f"Type {type_code.to_slicer()} names several anatomies: "
                                     f"{', '.join(a.name for a in members)}.")
                entry["recommendedDisplayRGBValue"] = list(members[0].color)
                entry["3dSlicerLabel"] = members[0].display_name
            type_list.append(entry)
        category_list.append({**_code_fields(category), "showAnatomy": False, "Type": type_list})
    return {
        "SegmentationCategoryTypeContextName": SLICER_CATEGORY_TYPE_CONTEXT,
        "@schema": TERMINOLOGY_SCHEMA,
        "SegmentationCodes": {"Category": category_list},
    }


def terminology_file_text(anatomies: Iterable[Anatomy]) -> str:
    """The exact text of :data:`TERMINOLOGY_FILE` for ``anatomies`` (tests compare it)."""
    return json.dumps(build_slicer_terminology(anatomies), indent=1, ensure_ascii=True) + "\n"


def write_terminology_file(path: str | Path = TERMINOLOGY_FILE) -> Path:
    """Regenerate the shipped file from the catalog (after a catalog change)::

        python -c "from clnet.catalog.terminology import write_terminology_file as w; print(w())"
    """
    from .catalog import load_catalog

    Path(path).write_text(terminology_file_text(load_catalog()), encoding="utf-8", newline="\n")
    return Path(path)
