"""Tiny synthetic labelled CTs (nnU-Net layout) for tests, smoke runs and the DDP check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# label value → TotalSegmentator-style name (mapped onto the catalog like real data)
SYNTHETIC_LABELS = {"liver": 1, "spleen": 2, "kidney_left": 3, "aorta": 4}


def synthetic_case(shape_zyx=(24, 40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A body ellipsoid in air with four blobs of distinct HU; returns (HU int16, labels uint8)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    ct = np.full(shape_zyx, -1000.0)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    ct[body] = 0.0
    lab = np.zeros(shape_zyx, dtype=np.uint8)
    blobs = [(1, (0.0, -0.1, -0.4), 0.35, 60), (2, (0.1, 0.2, 0.4), 0.25, 45),
             (3, (-0.2, 0.3, -0.1), 0.2, 30), (4, (0.0, 0.45, 0.1), 0.12, 200)]
    for value, c, r, hu in blobs:
        c = np.array(c) + rng.uniform(-0.08, 0.08, 3)
        m = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2) & body
        ct[m] = hu
        lab[m] = value
    ct += rng.normal(0, 15, shape_zyx) * body
    return ct.astype(np.int16), lab


def write_synthetic_dataset(root: str | Path, n_cases: int = 2, shape_zyx=(24, 40, 40),
                            spacing_xyz=(3.0, 3.0, 3.0), labels: dict[str, int] | None = None) -> Path:
    """Write an nnU-Net-style folder (imagesTr/, labelsTr/, dataset.json); ``labels`` may be a subset
    of :data:`SYNTHETIC_LABELS` to make a partially labelled dataset (other blobs become 0)."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    keep = labels or SYNTHETIC_LABELS
    for i in range(n_cases):
        ct, lab = synthetic_case(shape_zyx, seed=i)
        lab = np.where(np.isin(lab, list(keep.values())), lab, 0).astype(np.uint8)
        for arr, path in ((ct, root / "imagesTr" / f"case{i:03d}_0000.nii.gz"),
                          (lab, root / "labelsTr" / f"case{i:03d}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(spacing_xyz)
            sitk.WriteImage(img, str(path))
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **keep}, "numTraining": n_cases,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return root
