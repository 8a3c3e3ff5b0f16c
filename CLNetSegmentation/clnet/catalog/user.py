"""User-defined anatomies: structures beyond the catalog that one model's decoders output.

They live in the model's manifest (``user_anatomies``), never in the packaged catalog; a model's
view of the world is the catalog plus that overlay (:func:`catalog_for`). Their label values come
from a reserved range so they can never collide with a catalog label, present or future.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import ClnetError
from .anatomy import NAME_STYLES, Anatomy
from .catalog import Catalog, load_catalog
from .terminology import Code, Terminology

USER_LABEL_FIRST = 1000
USER_LABEL_LAST = 2047  # training lookup tables are sized to this (clnet.training.datasets)
USER_REGION = "My anatomies"
DEFAULT_COLOR = (230, 180, 40)
# A user anatomy's category: Slicer's "Anatomical Structure".
_CATEGORY = Code("SCT", "123037004", "Anatomical Structure")


def parse_code(text: str) -> Code:
    """``SCHEME^VALUE^MEANING`` (e.g. ``SCT^78961009^Spleen``) → a terminology code."""
    parts = [p.strip() for p in text.split("^")]
    if len(parts) != 3 or not all(parts):
        raise ClnetError(f"Terminology code {text!r} is not SCHEME^VALUE^MEANING.",
                         'Example: --code "SCT^78961009^Spleen".')
    # '~' and '|' separate the fields of Slicer's terminology tag; DICOM limits the meaning to 64 characters.
    if any(c in text for c in "~|\\") or len(parts[2]) > 64 or len(parts[0]) > 16:
        raise ClnetError(f"Terminology code {text!r} cannot be written to seg.nrrd / DICOM-SEG.",
                         "Leave out ~ | and \\, keep the scheme to 16 and the meaning to 64 characters.")
    return Code(parts[0], parts[1], parts[2])


def to_anatomy(entry: dict[str, Any]) -> Anatomy:
    """A manifest ``user_anatomies`` entry as an :class:`Anatomy` (region "My anatomies")."""
    code = entry.get("code")
    term = Terminology(_CATEGORY, Code(*code)) if code else None
    r, g, b = (int(c) for c in entry.get("color", DEFAULT_COLOR))
    return Anatomy(label=int(entry["label"]), name=str(entry["name"]), display_name=str(entry["name"]),
                   region=USER_REGION, decoder=entry.get("decoder"), color=(r, g, b), terminology=term,
                   source="user")


def from_label_entry(entry: object) -> Anatomy | None:
    """The user anatomy that a ``segmentation.json`` ``labels`` entry describes (``source: "user"``).

    For readers of a result folder without its model (``clnet evaluate``, the Slicer import); None
    for a catalog anatomy's entry or one that is not an anatomy record.
    """
    if not isinstance(entry, dict) or entry.get("source") != "user":
        return None
    term = entry.get("terminology") or {}
    code = term.get("type") if isinstance(term, dict) else None
    try:
        return to_anatomy({"name": entry["name"], "label": entry["label"], "color": entry["color"],
                           "decoder": entry.get("decoder"),
                           "code": [code["scheme"], code["value"], code["meaning"]] if code else None})
    except (KeyError, TypeError, ValueError):
        return None


def user_anatomies(manifest) -> list[Anatomy]:
    """The model's user-defined anatomies (``manifest`` is a :class:`clnet.manifest.Manifest`)."""
    return [to_anatomy(e) for e in getattr(manifest, "user_anatomies", None) or []]


def catalog_for(manifest) -> Catalog:
    """The packaged catalog plus ``manifest``'s user anatomies (the global catalog is not changed)."""
    extra = user_anatomies(manifest) if manifest is not None else []
    base = load_catalog()
    return Catalog([*base.anatomies, *extra]) if extra else base


def _check_name(name: str) -> str:
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_ ()\-]{0,63}", name):
        raise ClnetError(f"Anatomy name {name!r} is not usable.",
                         "Use letters, digits, spaces, _ - ( ); at most 64 characters.")
    return name


def _file_names(name: str) -> set[str]:
    """The mask file stems (both naming styles, case-folded) a user anatomy called ``name`` writes."""
    a = Anatomy(USER_LABEL_FIRST, name, name, USER_REGION, None, DEFAULT_COLOR, None, source="user")
    return {a.name_in(style).lower() for style in NAME_STYLES}


def new_user_anatomy(name: str, existing: Sequence[dict[str, Any]], decoder: str,
                     color: Sequence[int] | None = None, code: str | None = None) -> dict[str, Any]:
    """A manifest entry for a new user anatomy with the next free label of the reserved range."""
    name = _check_name(name)
    if load_catalog().get(name) is not None:
        raise ClnetError(f"{name!r} is a catalog anatomy ({load_catalog().by_name(name).name}).",
                         "Pass it with --anatomies instead of --new-anatomy.")
    if any(str(e["name"]).lower() == name.lower() for e in existing):
        raise ClnetError(f"The model already has a user anatomy named {name!r}.", "Pick another name.")
    clash = next((e["name"] for e in existing if _file_names(str(e["name"])) & _file_names(name)), None)
    if clash is not None:
        raise ClnetError(f"{name!r} and the model's user anatomy {clash!r} would write the same mask file.",
                         "Pick a name that differs in more than spaces, brackets or letter case.")
    used = {int(e["label"]) for e in existing}
    label = next((v for v in range(USER_LABEL_FIRST, USER_LABEL_LAST + 1) if v not in used), None)
    if label is None:
        raise ClnetError("This model has no free label for another user anatomy.")
    rgb = [int(c) for c in (color or DEFAULT_COLOR)]
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ClnetError(f"Colour {color} must be three values from 0 to 255.")
    c = parse_code(code) if code else None
    return {"name": name, "label": label, "color": rgb, "decoder": decoder,
            "code": [c.scheme, c.value, c.meaning] if c else None}
