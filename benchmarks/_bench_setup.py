"""Inputs, models and operation counts for ``bench_inference.py``: the real CT and the clinical-size
scans made from it, the random-weight models in the official layout, the matching nnU-Net specs,
and GFLOP per patch counted on the meta device."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# inputs


def find_real_ct(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("CLNET_BENCH_CT"):
        candidates.append(Path(os.environ["CLNET_BENCH_CT"]))
    candidates += [REPO / "shared" / "data" / "example_ct.nii.gz", REPO.parent / "shared" / "data" / "example_ct.nii.gz"]
    for c in candidates:
        if c.is_file():
            return c
    sys.exit("bench_inference: the real CT example_ct.nii.gz was not found; pass --ct PATH "
             f"(looked in: {', '.join(str(c) for c in candidates)}).")


def tile_z(image: sitk.Image, copies: float) -> sitk.Image:
    """The scan repeated ``copies`` times along z, the last copy cut short for a fraction (same
    origin, spacing and direction; longer)."""
    if copies == 1:
        return image
    arr = sitk.GetArrayViewFromImage(image)
    slices = max(1, int(round(arr.shape[0] * copies)))
    out = sitk.GetImageFromArray(np.concatenate([arr] * int(np.ceil(copies)), axis=0)[:slices])
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    return out


def realistic_ct(ct: sitk.Image, inplane: int = 512, z_spacing: float = 1.5, min_slices: int = 440) -> sitk.Image:
    """A clinical-size scan from the real CT: 512×512 in-plane over its (square) field of view, 1.5 mm
    slices, tiled along z to at least ``min_slices`` slices (the real CT's 336 mm gives 224 slices, so
    two copies: 512×512×448), int16 like a typical CT series. ``min_slices=0``: not tiled."""
    size, spacing = np.array(ct.GetSize()), np.array(ct.GetSpacing())
    fov = size * spacing
    s_xy = float(max(fov[0], fov[1]) / inplane)
    new_spacing = np.array([s_xy, s_xy, z_spacing])
    new_size = np.array([inplane, inplane, int(round(fov[2] / z_spacing))])
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in size.tolist()]))
    origin = centre - direction @ (new_spacing * (new_size - 1) / 2.0)
    resampled = sitk.Resample(ct, [int(v) for v in new_size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                              new_spacing.tolist(), ct.GetDirection(), -1024.0, sitk.sitkInt16)
    copies = max(1, -(-min_slices // int(new_size[2])))
    return tile_z(resampled, copies)


def cached_image(path: Path, make: Callable[[], sitk.Image]) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part.nii.gz")
        sitk.WriteImage(make(), str(tmp), True)
        tmp.replace(path)
    return path


def medium_ct(real_ct: Path, workdir: Path) -> Path:
    """The real CT at 512×512 in-plane and 1.5 mm slices (512×512×224), cached in ``workdir``."""
    return cached_image(workdir / "inputs" / "medium_512x512x224.nii.gz",
                        lambda: realistic_ct(sitk.ReadImage(str(real_ct)), min_slices=0))


def median_run(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """``run()`` once untimed (warm-up), then ``repeats`` times: the median seconds and the last result."""
    run()
    seconds, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds), result


def describe_image(path: Path) -> dict:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {"path": str(path), "size_xyz": list(reader.GetSize()),
            "spacing_xyz": [round(s, 4) for s in reader.GetSpacing()]}


# --------------------------------------------------------------------------------------------------
# models


def official_random_manifest(quick: bool, width_scale: float = 1.0):
    """Random-weight stand-in for the released CL-Net: official encoder, the nine official decoders
    with their anatomy groups (222 outputs) and body-part windows, official tiling settings.
    ``width_scale`` narrows every decoder level (0.25: what structured pruning aims at); ``quick``
    shrinks widths and patch."""
    from clnet.catalog import load_catalog
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model import EncoderConfig
    from clnet.model.factory import build_manifest, official_encoder
    from clnet.official.plans import (
        FALLBACK_CT,
        OFFICIAL_BODY_THRESHOLD_HU,
        OFFICIAL_PATCH_SIZE,
        OFFICIAL_SIGMA_SCALE,
        OFFICIAL_STEP_SIZE,
        OFFICIAL_WINDOWS,
        head_anatomies,
        head_class_windows,
        official_label_table,
    )

    catalog = load_catalog()
    heads: dict[str, list[str]] = {}
    for row in sorted(official_label_table(), key=lambda r: r.label_id):
        heads.setdefault(row.head, []).append(catalog.by_name(row.anatomy).name)
    encoder = official_encoder()
    patch, spacing, fast = OFFICIAL_PATCH_SIZE, (1.5, 1.5, 1.5), (3.0, 3.0, 3.0)
    if quick:
        encoder = EncoderConfig(features=tuple(max(4, f // 8) for f in encoder.features), kernels=encoder.kernels,
                                strides=encoder.strides)
        patch, spacing, fast = (32, 64, 64), (4.5, 4.5, 4.5), (6.0, 6.0, 6.0)
    ct = FALLBACK_CT
    prep = Preprocessing(
        spacing_zyx=spacing, fast_spacing_zyx=fast, patch_size_zyx=tuple(patch),
        normalization=Normalization(ct["percentile_00_5"], ct["percentile_99_5"], ct["mean"], ct["sd"]),
        overlap=round(1.0 - OFFICIAL_STEP_SIZE, 6), gaussian_sigma_scale=OFFICIAL_SIGMA_SCALE,
        body_threshold_hu=OFFICIAL_BODY_THRESHOLD_HU,
    )
    name = ("official-pruned" if width_scale < 1 else "official-random") + ("-quick" if quick else "")
    what = f"decoders at {width_scale:g}× width" if width_scale < 1 else "dense decoders"
    manifest = build_manifest(name, encoder, heads, preprocessing=prep, width_scale=width_scale,
                              description=f"Random weights in the official CL-Net layout, {what} (benchmark only).")
    for head, entry in manifest.decoders.items():
        entry.bodypart_range = OFFICIAL_WINDOWS.get(head)
        # The released per-class statistics give each anatomy its own window (subsets gate by them).
        names = head_anatomies(head)
        windows, _ = head_class_windows(head, names, list(range(1, len(names) + 1)))
        entry.anatomy_bodypart_ranges = {catalog.by_name(n).name: w for n, w in windows.items()}
    return manifest


OFFICIAL_MODELS = {"official-random": 1.0, "official-pruned": 0.25}


def prepare_model(spec: str, quick: bool, workdir: Path) -> Path:
    """The model folder for ``--model`` (official-random is generated once into the work folder)."""
    from clnet.model.factory import save_random_model
    from clnet.registry import BUNDLED_MODELS_DIR

    base = spec.removesuffix("-quick")
    if base in OFFICIAL_MODELS:
        manifest = official_random_manifest(quick or spec.endswith("-quick"), OFFICIAL_MODELS[base])
        folder = workdir / "models" / manifest.name
        stamp = folder / "bench_stamp.json"
        wanted = json.dumps(manifest.to_dict(), sort_keys=True)
        if not (stamp.is_file() and stamp.read_text() == wanted):
            if folder.exists():
                shutil.rmtree(folder)
            save_random_model(folder, manifest, seed=0)
            stamp.write_text(wanted)
        return folder
    if spec == "demo":
        folder = BUNDLED_MODELS_DIR / "demo"
        if not (folder / "manifest.json").is_file():
            sys.exit(f"bench_inference: no bundled demo model at {folder}; use --model official-random or --model DIR.")
        return folder
    folder = Path(spec).expanduser()
    if not (folder / "manifest.json").is_file():
        sys.exit(f"bench_inference: {folder} is not a clnet model folder (no manifest.json).")
    return folder


def nnunet_specs(manifest, fast: bool) -> dict:
    """One nnU-Net spec per decoder: the decoder's classes, the model's spacing/patch/encoder layout."""
    from _nnunet_baseline import ModelSpec

    enc = manifest.encoder
    specs = {}
    for name, entry in manifest.decoders.items():
        prep = manifest.decoder_preprocessing(name)
        spacing = prep.fast_spacing_zyx if (fast and prep.fast_spacing_zyx) else prep.spacing_zyx
        n = prep.normalization
        specs[name] = ModelSpec(
            name=name, num_classes=entry.config.num_classes, spacing_zyx=tuple(spacing),
            patch_zyx=tuple(prep.patch_size_zyx), features=tuple(enc.features), kernels=tuple(enc.kernels),
            strides=tuple(enc.strides), convs_per_stage=enc.convs_per_stage,
            ct_properties={"percentile_00_5": n.clip_low, "percentile_99_5": n.clip_high, "mean": n.mean,
                           "std": n.std},
        )
    return specs


def clnet_tile_gflops(manifest, decoders: Sequence[str]) -> float:
    """GFLOP of one CL-Net forward pass (encoder once + ``decoders``) on one patch, on the meta device."""
    from clnet.model import CLNet
    from torch.utils.flop_counter import FlopCounterMode

    if not decoders:
        return 0.0
    with torch.device("meta"):
        network = CLNet(manifest.encoder, {d: manifest.decoders[d].config for d in decoders})
        x = torch.empty(1, 1, *manifest.decoder_preprocessing(decoders[0]).patch_size_zyx)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            network(x)
    return counter.get_total_flops() / 1e9


_GFLOPS: dict[tuple[str, str], float] = {}


def clnet_part_gflops(manifest, part: str) -> float:
    """GFLOP on one patch of the encoder (``part="encoder"``) or of one decoder alone."""
    from clnet.model import Encoder
    from torch.utils.flop_counter import FlopCounterMode

    key = (manifest.name, part)
    if key not in _GFLOPS:
        decoder = next(iter(manifest.decoders)) if part == "encoder" else part
        with torch.device("meta"):
            encoder = Encoder(manifest.encoder)
            x = torch.empty(1, 1, *manifest.decoder_preprocessing(decoder).patch_size_zyx)
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                encoder(x)
        enc = counter.get_total_flops() / 1e9
        _GFLOPS[key] = enc if part == "encoder" else clnet_tile_gflops(manifest, [part]) - enc
    return _GFLOPS[key]


def clnet_work_gflops(manifest, runs: dict[str, int]) -> float:
    """GFLOP of a whole CL-Net job from the tiles the encoder and each decoder really ran on."""
    return sum(clnet_part_gflops(manifest, part) * n for part, n in runs.items() if n)
