"""Data that ships with clnet: a small real CT to try the tool on without finding one first."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
EXAMPLE_CT_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"


def example_ct() -> Path:
    """The bundled abdomen-pelvis CT (122×101×112 voxels, 3 mm; see ``clnet/data/README.md``)."""
    return DATA_DIR / "example_ct.nii.gz"
