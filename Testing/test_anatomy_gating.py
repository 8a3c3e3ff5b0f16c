"""Per-anatomy body-part windows: which window a decoder is gated by for a subset, the slab of
slices the network runs on, the released model's per-class statistics, and a subset run on the real CT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from clnet.bodypart import anatomy_window, anatomy_windows
from clnet.errors import ModelError
from clnet.inference import Segmenter
from clnet.inference.gating import Gate
from clnet.manifest import DecoderEntry
from clnet.model.config import DecoderConfig
from clnet.official.plans import (
    OFFICIAL_WINDOWS,
    class_window,
    head_anatomies,
    head_class_windows,
    official_class_statistics,
)


def entry(ranges: dict, window=(0.0, 100.0)) -> DecoderEntry:
    return DecoderEntry("d", ["Liver", "Spleen", "Kidney_L"], DecoderConfig(num_classes=4), bodypart_range=window,
                        anatomy_bodypart_ranges=ranges)


def test_window_for_a_subset_is_the_union_of_its_anatomies_inside_the_decoder_window() -> None:
    e = entry({"Liver": (30.0, 60.0), "Spleen": (35.0, 50.0), "Kidney_L": (-10.0, 45.0)})
    assert e.window_for(["Liver", "Spleen", "Kidney_L"]) == (0.0, 100.0)  # all of them: the head's own
    assert e.window_for(["Liver"]) == (30.0, 60.0)
    assert e.window_for(["Spleen", "Liver"]) == (30.0, 60.0)
    assert e.window_for(["Kidney_L"]) == (0.0, 45.0)  # kept inside the decoder's window
    assert e.window_for(["Brain"]) == (0.0, 100.0)  # none of its own: the decoder's
    # An anatomy without a window of its own: no narrowing.
    assert entry({"Liver": (30.0, 60.0)}).window_for(["Liver", "Spleen"]) == (0.0, 100.0)
    assert entry({"Liver": (30.0, 60.0)}, window=None).window_for(["Liver"]) == (30.0, 60.0)
    assert entry({}).window_for(["Liver"]) == (0.0, 100.0)


def test_manifest_round_trip_and_stray_windows_are_refused() -> None:
    e = entry({"Liver": (30.0, 60.0)})
    back = DecoderEntry.from_dict("d", json.loads(json.dumps(e.to_dict())))
    assert back.anatomy_bodypart_ranges == {"Liver": (30.0, 60.0)}
    bad = e.to_dict()
    bad["anatomy_bodypart_ranges"]["Brain"] = [90.0, 100.0]
    with pytest.raises(ModelError, match="Brain"):
        DecoderEntry.from_dict("d", bad)
    assert "anatomy_bodypart_ranges" not in entry({}).to_dict()  # old manifests stay as they were


def test_anatomy_window_margin_and_floor() -> None:
    assert anatomy_window(30.0, 50.0) == (25.0, 55.0)  # 0.25 x extent 20
    assert anatomy_window(30.0, 31.0) == (25.0, 36.0)  # a 1-unit anatomy still gets 5 units
    assert anatomy_window(30.0, 50.0, extent=40.0) == (20.0, 60.0)
    assert anatomy_windows({"a": (0.0, 40.0)}, min_margin=0.0) == {"a": (-10.0, 50.0)}


def slab_of(scores: np.ndarray, windows: dict, min_depth: int):
    grid = sitk.Image([4, 4, scores.size], sitk.sitkUInt8)  # world z = slice index (mm)
    gate = Gate(np.arange(scores.size, dtype=float), scores, windows)
    return gate.slab(grid, list(windows), min_depth)


def test_slab_is_the_slices_in_any_window_enlarged_to_one_tile() -> None:
    scores = np.linspace(0.0, 99.0, 100)  # slice k scores k
    assert slab_of(scores, {"a": (40.0, 70.0)}, 8) == (40, 71)
    assert slab_of(scores, {"a": (40.0, 45.0)}, 16) == (35, 51)  # centred: 6 slices → 16
    assert slab_of(scores, {"a": (95.0, 120.0)}, 16) == (84, 100)  # kept inside the grid
    assert slab_of(scores, {"a": (10.0, 20.0), "b": (60.0, 62.0)}, 4) == (10, 63)
    assert slab_of(scores, {"a": (120.0, 130.0)}, 4) is None  # nowhere
    assert slab_of(scores, {"a": (120.0, 130.0), "b": None}, 4) == (0, 100)  # b always runs
    assert slab_of(scores, {"a": (40.0, 45.0)}, 500) == (0, 100)


def test_official_per_class_statistics_reproduce_the_head_windows() -> None:
    stats = official_class_statistics()
    assert len(stats) == 219
    liver = class_window("MERGED_ABDOMEN", stats["Liver"])
    assert liver == pytest.approx((33.556 - 0.25 * 20.247, 53.521 + 0.25 * 20.247), abs=1e-3)
    # Heads whose classes all sit in that one head: the head rule over its classes gives the released window.
    for head in ("MERGED_HN1", "MERGED_HN2", "MERGED_ABDOMEN", "MERGED_BONE", "HN_LNS", "Chest_LNS"):
        rows = [stats[n] for n in head_anatomies(head)]
        pad = 0.25 * max(r["mean"] for r in rows)
        lo = min(r["percentile_00_5"] for r in rows) - pad
        hi = max(r["percentile_99_5"] for r in rows) + pad
        assert (lo, hi) == pytest.approx(OFFICIAL_WINDOWS[head], abs=0.01)
    names = head_anatomies("MERGED_ABDOMEN")
    windows, source = head_class_windows("MERGED_ABDOMEN", names, list(range(1, len(names) + 1)))
    assert "packaged" in source and windows["Liver"] == liver
    # A task's own bpr_scores.json (keyed by dataset label id) wins over the packaged table.
    own = {str(i): {"percentile_00_5": 10.0, "percentile_99_5": 20.0, "mean": 8.0, "sd": 1.0, "mn": 0.0, "mx": 30.0}
           for i in range(1, len(names) + 1)}
    windows, source = head_class_windows("MERGED_ABDOMEN", names, list(range(1, len(names) + 1)), own)
    assert "bpr_scores.json" in source and windows["Liver"] == (5.0, 25.0)


def test_a_subset_runs_only_on_its_own_slab_of_the_real_ct(tiny_model_dir, example_ct, tmp_path) -> None:
    """The real CT scores about 3.6 (femurs) to 43 (T11). With per-anatomy windows, the kidneys alone
    (window 27-49) run on the upper slices only; the full set and an ungated run use every slice."""
    ct = sitk.ReadImage(str(example_ct))
    model = tmp_path / "per-anatomy"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    abdomen = manifest["decoders"]["abdomen"]
    abdomen["bodypart_range"] = [-5.0, 60.0]
    abdomen["anatomy_bodypart_ranges"] = {"Liver": [28.5, 58.6], "Spleen": [34.4, 55.7],
                                          "Kidney_L": [27.1, 48.9], "Kidney_R": [26.5, 48.1]}
    manifest["decoders"]["spine"]["bodypart_range"] = [-5.0, 60.0]
    (model / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(model, device="cpu")

    kidneys = seg.segment(ct, anatomies=["Kidney_L", "Kidney_R"], fast=True)
    full = seg.segment(ct, fast=True)
    (z0, z1, depth), = kidneys.settings["bodypart_gating"]["slabs"]
    assert kidneys.settings["bodypart_gating"]["windows"]["abdomen"] == [26.5, 48.9]
    assert full.settings["bodypart_gating"]["slabs"] == [[0, depth, depth]]
    assert 0 < z0 and z1 == depth  # the kidneys' slab reaches the top of the scan, not the femurs
    assert kidneys.settings["tiles_run"]["encoder"] < full.settings["tiles_run"]["encoder"]
    # Nothing is labelled below the slab (input slices are LPS, inferior first, like the model grid).
    grid_mm = 6.0  # fast spacing of the tiny model; the input has 3 mm slices
    lowest_input_slice = int(z0 * grid_mm / ct.GetSpacing()[2])
    arr = kidneys.array()
    assert arr.any()
    assert not arr[: lowest_input_slice - 1].any()
    labels = {seg.catalog.by_name(n).label for n in ("Kidney_L", "Kidney_R")}
    assert set(np.unique(arr).tolist()) <= labels | {0}
