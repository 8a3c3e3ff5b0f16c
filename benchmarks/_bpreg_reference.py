"""bpreg's own inference on NIfTI files: the reference side of ``bpr_parity.py``.

Runs in a separate environment that has ``bpreg==1.1.0`` installed with its pinned dependencies (torch
1.8.1, albumentations 0.5.2, ...; Python 3.8), never in clnet's own. Two references per case, both
bpreg's own code:

- ``nifti2json``: ``InferenceModel(model_dir).nifti2json(path)``, what ``bpreg_predict`` runs (nibabel
  loads the volume as float32, so the HU scaling, blur and resize run in float32);
- ``official_path``: the same model's ``Nifti2Npy`` functions and ``Scores`` on the scan's stored
  (integer) values, as the official CL-Net inference calls them on its ``.npy`` copy of the scan
  (float64 arithmetic).

    python _bpreg_reference.py MODEL_DIR OUT_DIR CASE.nii.gz ...

writes OUT_DIR/<case>.json (bpreg's JSON for both, each plus "raw") and the network inputs as .npy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def official_path(model, case: str) -> tuple:
    """bpreg's preprocessing as official CL-Net calls it: on the scan's stored values (an integer array,
    so bpreg's HU scaling computes in float64), not on nibabel's float32 ``get_fdata``."""
    import nibabel as nib

    img = nib.load(case)
    x = np.asanyarray(img.dataobj)
    spacing = np.array(list(img.header.get_zooms()))
    x, spacing = model.n2n.reorder_volume(x, spacing, img.affine[:3, :3], Path(case).name)
    x = model.n2n.resize_volume(model.n2n.rescale_xy(x), spacing)
    return np.transpose(x, (2, 0, 1))[:, np.newaxis, :, :], spacing


def main(argv: list) -> int:
    from bpreg.inference.inference_model import InferenceModel, VolumeStorage

    model_dir, out_dir, cases = argv[0], Path(argv[1]), argv[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = InferenceModel(model_dir.rstrip("/") + "/", gpu=0)
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    for case in cases:
        name = Path(case).name.replace(".nii.gz", "")
        result = model.nifti2json(case)  # bpreg's own inference, what `bpreg_predict` runs
        if not isinstance(result, dict):  # bpreg could not convert the volume
            (out_dir / f"{name}.json").write_text(json.dumps({"failed": True}))
            continue
        x, _spacing = model.n2n.preprocess_nifti(case)
        x = np.transpose(x, (2, 0, 1))[:, np.newaxis, :, :]
        result["raw"] = [float(v) for v in model.predict_tensor(torch.tensor(x))]
        np.save(out_dir / f"{name}.npy", x[:, 0].astype(np.float32))
        x64, spacing = official_path(model, case)
        raw64 = model.predict_tensor(torch.tensor(x64))
        official = VolumeStorage(model.parse_scores(raw64, spacing[2]), model.lookuptable).json
        official["raw"] = [float(v) for v in raw64]
        np.save(out_dir / f"{name}_official.npy", x64[:, 0].astype(np.float32))
        payload = {"nifti2json": result, "official_path": official, "versions": versions}
        (out_dir / f"{name}.json").write_text(json.dumps(payload, default=float))
        print(f"{name}: {len(raw64)} slices", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
