"""Tests for the anatomy catalog (clnet.catalog)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from clnet.catalog import SHARED_STRUCTURES, Anatomy, Terminology, load_catalog
from clnet.errors import ClnetError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference"
TS_LABELS = SHARED / "data" / "labels.json"

REGIONS = [
    "Head & Neck",
    "Thorax",
    "Abdomen & Pelvis",
    "Skeleton",
    "Vessels",
    "Lymph-node stations H&N",
    "Lymph-node stations chest",
]
LEFT, RIGHT = "7771000", "24028007"
# Lung lobes carry their side inside the name (Lung_LUL = left upper lobe).
LOBE_SIDE = {"Lung_LUL": "L", "Lung_LLL": "L", "Lung_RUL": "R", "Lung_RML": "R", "Lung_RLL": "R"}
# TotalSegmentator 'total' classes deliberately left without a catalog counterpart.
TS_UNMAPPED = {"thyroid_gland", "kidney_cyst_left", "kidney_cyst_right"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _official_rows() -> list[dict[str, str]]:
    path = REFERENCE / "official-decoders.tsv"
    if not path.is_file():
        pytest.skip(f"shared reference data not found at {path}")
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _ts_labels() -> dict[str, str]:
    if not TS_LABELS.is_file():
        pytest.skip(f"shared TotalSegmentator labels not found at {TS_LABELS}")
    return json.loads(TS_LABELS.read_text())


# --- structure of the catalog -------------------------------------------------------------


def test_size_names_and_labels(catalog):
    assert len(catalog) == 235
    names = [a.name for a in catalog]
    assert len(set(names)) == 235
    assert [a.label for a in catalog] == list(range(1, 236))
    assert all(isinstance(a, Anatomy) for a in catalog)
    assert load_catalog() is catalog  # cached


def test_regions_in_order_and_non_empty(catalog):
    assert catalog.regions() == REGIONS
    for region in REGIONS:
        assert catalog.in_region(region), region
    # labels are grouped by region: each region is one contiguous label block
    seen: list[str] = []
    for a in catalog:
        if not seen or seen[-1] != a.region:
            assert a.region not in seen, f"region {a.region} is split"
            seen.append(a.region)


def test_colors_valid_and_neighbours_distinct(catalog):
    prev = None
    for a in catalog:
        assert len(a.color) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in a.color), a.name
        if prev is not None:
            dist = sum((x - y) ** 2 for x, y in zip(a.color, prev.color)) ** 0.5
            assert dist >= 25, f"{prev.name} and {a.name} have nearly the same color"
        prev = a


def test_display_names_and_aliases_are_clean(catalog):
    for a in catalog:
        assert a.display_name and a.display_name[0].isupper(), a.name
        for alias in a.aliases:
            # snake_case; TotalSegmentator spellings such as vertebrae_T11 keep their capitals
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-zA-Z0-9]+)*", alias), (a.name, alias)


# --- official decoders --------------------------------------------------------------------


def test_every_official_name_present_with_a_valid_owner(catalog):
    rows = _official_rows()
    decoders_of: dict[str, set[str]] = {}
    for r in rows:
        decoders_of.setdefault(r["anatomy"], set()).add(r["decoder"])
    assert len(decoders_of) == 219
    for name, decs in decoders_of.items():
        a = catalog.by_name(name)
        assert a.name == name
        assert a.decoder in decs, f"{name}: {a.decoder} not in {decs}"
        assert a.source.startswith("confirmed-code"), name
    extra = [a for a in catalog if a.name not in decoders_of]
    assert len(extra) == 16
    assert all(a.decoder is None and a.source.startswith("reconstructed-candidate") for a in extra)


def test_decoder_counts_match_official(catalog):
    rows = _official_rows()
    official = Counter(r["decoder"] for r in rows)
    owned = {d: len(v) for d, v in catalog.decoders().items()}
    assert set(owned) == set(official)
    shared_elsewhere = Counter(d for decs in SHARED_STRUCTURES.values() for d in decs[1:])
    for dec, n in official.items():
        assert owned[dec] + shared_elsewhere[dec] == n, dec
    # the counts named in the issue (each structure counted once, under its owner)
    assert owned == {
        "MERGED_HN1": 26, "MERGED_HN2": 13, "MERGED_HN3": 10, "MERGED_CHEST1": 34,
        "MERGED_CHEST2": 14, "MERGED_ABDOMEN": 27, "MERGED_BONE": 62, "HN_LNS": 18, "Chest_LNS": 15,
    }  # fmt: skip
    for name, decs in SHARED_STRUCTURES.items():
        assert catalog.by_name(name).decoder == decs[0]
        assert {r["decoder"] for r in rows if r["anatomy"] == name} == set(decs)


# --- TotalSegmentator aliases -------------------------------------------------------------


def test_totalsegmentator_spot_checks(catalog):
    expected = {
        "liver": "Liver",
        "kidney_left": "Kidney_L",
        "kidney_right": "Kidney_R",
        "rib_right_12": "Bone_Rib12_R",
        "rib_left_7": "Bone_Rib7_L",
        "vertebrae_T11": "Bone_Vert_T11",
        "vertebrae_L1": "Bone_Vert_L1",
        "vertebrae_S1": "Bone_Vert_S1",
        "iliopsoas_left": "Musc_Iliopsoas_L",
        "aorta": "A_Aorta_Descending",
        "inferior_vena_cava": "V_VenaCava_I",
        "portal_vein_and_splenic_vein": "V_Portal_Splenic",
        "spinal_cord": "SpinalCord",
        "autochthon_left": "Musc_Autochthon_L",
        "lung_upper_lobe_left": "Lung_LUL",
        "lung_middle_lobe_right": "Lung_RML",
        "small_bowel": "SmallBowel",
        "costal_cartilages": "Bone_CostalCartilages",
        "hip_left": "Bone_Hip_L",
        "femur_left": "Bone_Femur_L",
        "gluteus_maximus_left": "Musc_GluteusMax_L",
        "iliac_artery_left": "A_Iliac_L",
        "iliac_vena_left": "V_Iliac_L",
        "adrenal_gland_left": "Glnd_Adrenal_L",
        "esophagus": "Eso",
        "atrial_appendage_left": "LAA",
        "clavicula_right": "Bone_Clavicula_R",
        "subclavian_artery_left": "A_Subclavian_L",
    }
    for ts_name, name in expected.items():
        assert catalog.by_name(ts_name).name == name, ts_name
        assert ts_name in catalog.by_name(name).aliases


def test_every_mapped_totalsegmentator_class_resolves(catalog):
    ts_names = set(_ts_labels().values())
    assert TS_UNMAPPED <= ts_names
    lateral_exceptions = {"atrial_appendage_left": "LAA"}
    targets = []
    for ts_name in sorted(ts_names - TS_UNMAPPED):
        a = catalog.by_name(ts_name)
        assert ts_name in a.aliases, ts_name  # mapped by alias, not by a fuzzy accident
        targets.append(a.name)
        if ts_name in lateral_exceptions:
            assert a.name == lateral_exceptions[ts_name]
        elif ts_name.startswith("lung_") and "_lobe_" in ts_name:
            side = "L" if ts_name.endswith("_left") else "R"
            assert a.name.startswith(f"Lung_{side}"), ts_name
        elif ts_name.endswith("_left") or "_left_" in ts_name:
            assert a.name.endswith("_L"), (ts_name, a.name)
        elif ts_name.endswith("_right") or "_right_" in ts_name:
            assert a.name.endswith("_R"), (ts_name, a.name)
    assert len(targets) == len(set(targets)), "two TotalSegmentator classes map to one anatomy"
    for ts_name in TS_UNMAPPED:
        assert ts_name not in catalog
        with pytest.raises(ClnetError):
            catalog.by_name(ts_name)


# --- terminology --------------------------------------------------------------------------


def test_laterality_modifiers(catalog):
    for a in catalog:
        t = a.terminology
        if t is None:
            continue
        assert t.category.scheme == "SCT" and t.type.scheme == "SCT"
        assert t.category.value == "123037004"
        # laterality already inside the type concept: "Left atrium", "Middle lobe of right lung"
        inherent = any(w in t.type.meaning.lower().split() for w in ("left", "right"))
        mod = t.modifier.value if t.modifier else None
        side = LOBE_SIDE.get(a.name) or (a.name[-1] if a.name[-2:] in ("_L", "_R") else None)
        if side == "L" and not inherent:
            assert mod == LEFT and t.modifier.meaning == "Left", a.name
        elif side == "R" and not inherent:
            assert mod == RIGHT and t.modifier.meaning == "Right", a.name
        else:
            assert mod not in (LEFT, RIGHT), a.name


def test_terminology_is_unique_per_anatomy(catalog):
    seen: dict[tuple, str] = {}
    for a in catalog:
        if a.terminology is None:
            continue
        t = a.terminology
        key = (t.type.value, t.modifier.value if t.modifier else None)
        assert key not in seen, f"{a.name} and {seen[key]} share a code"
        seen[key] = a.name


def test_terminology_coverage(catalog):
    coded = [a for a in catalog if a.terminology is not None]
    assert len(coded) >= 190
    for region in ("Lymph-node stations H&N", "Lymph-node stations chest"):
        assert all(a.terminology is None for a in catalog.in_region(region))


def test_liver_slicer_string(catalog):
    t = catalog.by_name("Liver").terminology
    assert t.to_slicer_string() == (
        "Segmentation category and type - CLNet Segmentation"
        "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^"
        "~Anatomic codes - DICOM master list~^^~^^"
    )
    kidney = catalog.by_name("kidney_left").terminology
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in kidney.to_slicer_string()
    assert Terminology.from_dict(kidney.to_dict()) == kidney


# --- lookups ------------------------------------------------------------------------------


def test_lookup_variants(catalog):
    assert catalog.by_name("liver") is catalog.by_name("LIVER") is catalog.by_name(" Liver ")
    assert catalog.by_name("Middle ear (left)").name == "Ear_Mid_L"
    assert catalog.by_name("oesophagus").name == "Eso"
    assert catalog.by_label(1).name == "Ear_Mid_L"
    assert catalog.by_label(235).label == 235
    with pytest.raises(ClnetError):
        catalog.by_label(0)
    assert catalog.get("no such thing") is None


def test_unknown_name_suggests_close_matches(catalog):
    with pytest.raises(ClnetError) as err:
        catalog.by_name("Livr")
    message = str(err.value)
    assert "Livr" in message and "Liver" in message
    with pytest.raises(ClnetError) as err:
        catalog.by_name("kidney_lft")
    assert "Kidney_L" in str(err.value)
    with pytest.raises(ClnetError) as err:
        catalog.by_name("zzzzzzzz")
    assert "clnet anatomies" in str(err.value)


def test_region_slugs_and_resolve(catalog):
    thorax = catalog.in_region("thorax")
    assert thorax == catalog.in_region("Thorax") == catalog.in_region("THORAX")
    assert {a.region for a in thorax} == {"Thorax"}
    for slug, region in {
        "head-neck": "Head & Neck",
        "abdomen": "Abdomen & Pelvis",
        "skeleton": "Skeleton",
        "vessels": "Vessels",
        "lns-hn": "Lymph-node stations H&N",
        "lns-chest": "Lymph-node stations chest",
    }.items():
        assert {a.region for a in catalog.in_region(slug)} == {region}, slug
    with pytest.raises(ClnetError):
        catalog.in_region("elbow")

    assert catalog.resolve() == list(catalog) == catalog.resolve([], [])
    picked = catalog.resolve(names=["liver", "Heart", "Bone_Vert_L1", "heart"], regions=["lns-chest"])
    assert [a.label for a in picked] == sorted({a.label for a in picked})
    assert len(picked) == 3 + 15
    assert catalog.by_name("Heart") in picked and picked.count(catalog.by_name("Heart")) == 1
    assert catalog.resolve(names=["Heart"], regions=["thorax"]) == thorax


def test_to_json(catalog):
    data = catalog.to_json()
    assert len(data) == 235
    assert all(d["available"] is False for d in data)
    json.dumps(data)  # serialisable
    first = data[0]
    for key in ("name", "label", "region", "decoder", "color", "terminology", "available"):
        assert key in first
    assert isinstance(first["color"], list) and len(first["color"]) == 3
    marked = catalog.to_json(available={"Liver", "Kidney_L"})
    assert {d["name"] for d in marked if d["available"]} == {"Liver", "Kidney_L"}
    liver = next(d for d in marked if d["name"] == "Liver")
    assert liver["terminology"]["type"] == {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}
