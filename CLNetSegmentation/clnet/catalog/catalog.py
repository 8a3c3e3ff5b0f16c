"""The anatomy catalog: 235 structures with stable label values, loaded from ``anatomies.tsv``.

The TSV ships inside the package and is the single source of truth; see ``docs/catalog.md`` for
how the list was built. Lookups are case-insensitive and accept the stable name, the display
name or any alias (TotalSegmentator class names included).
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import io
import re
from collections.abc import Iterable, Iterator

from ..errors import ClnetError
from .anatomy import Anatomy
from .terminology import Code, Terminology

CATALOG_FILE = "anatomies.tsv"

# Region display strings in catalog order, and the short slugs accepted on the command line.
REGION_SLUGS: dict[str, str] = {
    "head-neck": "Head & Neck",
    "thorax": "Thorax",
    "abdomen": "Abdomen & Pelvis",
    "skeleton": "Skeleton",
    "vessels": "Vessels",
    "lns-hn": "Lymph-node stations H&N",
    "lns-chest": "Lymph-node stations chest",
}
# Further spellings accepted for regions (besides the display strings and slugs above).
_REGION_EXTRA = {
    "hn": "Head & Neck",
    "head-and-neck": "Head & Neck",
    "chest": "Thorax",
    "abdomen-pelvis": "Abdomen & Pelvis",
    "bone": "Skeleton",
    "bones": "Skeleton",
}

# Structures that the official release predicts in two decoders: catalog owner first.
SHARED_STRUCTURES: dict[str, tuple[str, ...]] = {
    "Eso": ("MERGED_HN3", "MERGED_CHEST1"),
    "SpinalCord": ("MERGED_HN3", "MERGED_CHEST2"),
    "Bone_Sternum": ("MERGED_CHEST1", "MERGED_BONE"),
}

_COLUMNS = (
    "label", "name", "display_name", "region", "decoder", "color",
    "category_scheme", "category_value", "category_meaning",
    "type_scheme", "type_value", "type_meaning",
    "modifier_scheme", "modifier_value", "modifier_meaning",
    "aliases", "source",
)  # fmt: skip


def _key(text: str) -> str:
    """Normalised lookup key: lower case, surrounding blanks removed."""
    return text.strip().lower()


def _loose_key(text: str) -> str:
    """Order- and punctuation-free key: ``Left kidney``, ``kidney-left`` and ``Kidney (left)`` agree."""
    return " ".join(sorted(re.findall(r"[a-z0-9]+", text.lower())))


def _region_key(text: str) -> str:
    """Region lookup key: lower case, runs of non-alphanumerics collapsed to ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.strip().lower().replace("&", " and ")).strip("-")


class Catalog:
    """An immutable, label-ordered collection of :class:`Anatomy` records."""

    __slots__ = ("_anatomies", "_by_key", "_by_label", "_by_loose_key", "_regions")

    def __init__(self, anatomies: Iterable[Anatomy]) -> None:
        items = tuple(sorted(anatomies, key=lambda a: a.label))
        by_key: dict[str, Anatomy] = {}
        by_label: dict[int, Anatomy] = {}
        for a in items:
            if a.label in by_label:
                raise ValueError(f"duplicate label {a.label} ({by_label[a.label].name}, {a.name})")
            by_label[a.label] = a
            for k in {_key(a.name), _key(a.display_name), *(_key(x) for x in a.aliases)}:
                other = by_key.setdefault(k, a)
                if other is not a:
                    raise ValueError(f"'{k}' names both {other.name} and {a.name}")
        # Second chance for names typed in another word order or punctuation; a loose key that
        # two anatomies share would be ambiguous, so it is left out.
        loose: dict[str, Anatomy | None] = {}
        for k, a in by_key.items():
            lk = _loose_key(k)
            loose[lk] = a if loose.get(lk, a) is a else None
        regions: dict[str, None] = {}
        for a in items:
            regions.setdefault(a.region, None)
        self._anatomies = items
        self._by_key = by_key
        self._by_loose_key = {k: a for k, a in loose.items() if a is not None and k}
        self._by_label = by_label
        self._regions = tuple(regions)

    def __len__(self) -> int:
        return len(self._anatomies)

    def __iter__(self) -> Iterator[Anatomy]:
        return iter(self._anatomies)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Catalog({len(self)} anatomies, {len(self._regions)} regions)"

    @property
    def anatomies(self) -> tuple[Anatomy, ...]:
        """All anatomies in label order."""
        return self._anatomies

    def get(self, name: str) -> Anatomy | None:
        """Like :meth:`by_name` but returns ``None`` for an unknown name."""
        found = self._by_key.get(_key(name))
        return found if found is not None else self._by_loose_key.get(_loose_key(name))

    def by_name(self, name: str) -> Anatomy:
        """Anatomy by name, display name or alias, case-insensitive; word order and punctuation do not
        matter either (``Left kidney``, ``kidney-left`` and ``Kidney (left)`` all name Kidney_L).

        Raises :class:`~clnet.errors.ClnetError` with up to three close matches when unknown.
        """
        found = self.get(name)
        if found is not None:
            return found
        suggestions: list[str] = []
        for k in difflib.get_close_matches(_key(name), list(self._by_key), n=10, cutoff=0.6):
            canonical = self._by_key[k].name
            if canonical not in suggestions:
                suggestions.append(canonical)
        hint = f"Did you mean {', '.join(suggestions[:3])}? " if suggestions else ""
        raise ClnetError(
            f"Unknown anatomy '{name}'.",
            hint=hint + "Run `clnet anatomies` to list the valid names.",
        )

    def by_label(self, label: int) -> Anatomy:
        """Anatomy by its stable label value (1..N)."""
        try:
            return self._by_label[int(label)]
        except (KeyError, ValueError, TypeError):
            raise ClnetError(
                f"No anatomy has label {label!r}.",
                hint=f"Labels run from 1 to {max(self._by_label)}.",
            ) from None

    def regions(self) -> list[str]:
        """Region display names in catalog order."""
        return list(self._regions)

    def region_name(self, region: str) -> str:
        """Canonical region display name for a display name or slug (case-insensitive)."""
        k = _region_key(region)
        for r in self._regions:
            if _region_key(r) == k:
                return r
        lookup = {**_REGION_EXTRA, **REGION_SLUGS}
        if k in lookup and lookup[k] in self._regions:
            return lookup[k]
        raise ClnetError(
            f"Unknown region '{region}'.",
            hint="Use one of: " + ", ".join(f"{s} ({r})" for s, r in REGION_SLUGS.items()) + ".",
        )

    def in_region(self, region: str) -> list[Anatomy]:
        """Anatomies of one region (display name or slug such as ``thorax`` or ``lns-hn``)."""
        name = self.region_name(region)
        return [a for a in self._anatomies if a.region == name]

    def resolve(
        self, names: Iterable[str] | None = None, regions: Iterable[str] | None = None
    ) -> list[Anatomy]:
        """Union of the named anatomies and the given regions, in label order, without duplicates.

        With neither names nor regions (``None`` or empty), returns every anatomy.
        """
        names = [n for n in (names or ()) if n.strip()]
        regions = [r for r in (regions or ()) if r.strip()]
        if not names and not regions:
            return list(self._anatomies)
        chosen: dict[int, Anatomy] = {}
        for n in names:
            a = self.by_name(n)
            chosen[a.label] = a
        for r in regions:
            for a in self.in_region(r):
                chosen[a.label] = a
        return [chosen[k] for k in sorted(chosen)]

    def decoders(self) -> dict[str, list[Anatomy]]:
        """Official decoder name -> the anatomies it owns (in label order).

        Anatomies outside the official release (decoder ``None``) are left out; the structures
        listed in :data:`SHARED_STRUCTURES` appear only under their owner.
        """
        out: dict[str, list[Anatomy]] = {}
        for a in self._anatomies:
            if a.decoder is not None:
                out.setdefault(a.decoder, []).append(a)
        return out

    def to_json(self, available: set[str] | None = None) -> list[dict]:
        """JSON-ready list of every anatomy; ``available`` holds the names a model can segment."""
        avail = available or set()
        return [a.to_dict(available=a.name in avail) for a in self._anatomies]


def _code(row: dict[str, str], prefix: str) -> Code | None:
    scheme, value, meaning = (row[f"{prefix}_{f}"].strip() for f in ("scheme", "value", "meaning"))
    if not (scheme or value or meaning):
        return None
    if not (scheme and value and meaning):
        raise ValueError(f"{row['name']}: incomplete {prefix} code")
    return Code(scheme, value, meaning)


def _parse_row(row: dict[str, str]) -> Anatomy:
    color = tuple(int(c) for c in row["color"].split(","))
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f"{row['name']}: bad color {row['color']!r}")
    category, type_, modifier = _code(row, "category"), _code(row, "type"), _code(row, "modifier")
    if (category is None) != (type_ is None) or (modifier is not None and type_ is None):
        raise ValueError(f"{row['name']}: terminology needs both category and type")
    terminology = Terminology(category, type_, modifier) if category and type_ else None
    decoder = row["decoder"].strip()
    return Anatomy(
        label=int(row["label"]),
        name=row["name"].strip(),
        display_name=row["display_name"].strip(),
        region=row["region"].strip(),
        decoder=None if decoder in ("", "-") else decoder,
        color=(color[0], color[1], color[2]),
        terminology=terminology,
        aliases=tuple(a.strip() for a in row["aliases"].split(";") if a.strip()),
        source=row["source"].strip(),
    )


def parse_catalog(text: str) -> Catalog:
    """Build a :class:`Catalog` from the TSV text (header row + one row per anatomy)."""
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = set(_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"catalog TSV lacks columns: {', '.join(sorted(missing))}")
    return Catalog(_parse_row(row) for row in reader)


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The packaged catalog (read once, then cached)."""
    text = importlib.resources.files(__package__).joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return parse_catalog(text)
