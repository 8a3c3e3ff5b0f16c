"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the shared test data (labels, DICOM, MR, small CT); skips the test when it is not there.

    Tests that need only the example CT use :func:`example_ct` instead, which ships in the repository.
    """
    if not (SHARED_DATA / "example_ct.nii.gz").is_file():
        pytest.skip(f"shared example data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Where the shared data would be, without skipping (for tests that need it only in some cases)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def example_ct() -> Path:
    """The real abdomen-pelvis CT that ships with clnet (``clnet.data.example_ct()``, 122×101×112, 3 mm)."""
    from clnet.data import example_ct as bundled

    return bundled()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight model (tiny encoder, two decoders, 3 mm). Not trained: outputs are
    arbitrary but deterministic, which is what plumbing and geometry tests need."""
    from clnet.manifest import Normalization, Preprocessing
    from clnet.model.factory import build_manifest, save_random_model, tiny_encoder

    prep = Preprocessing(
        spacing_zyx=(3.0, 3.0, 3.0), fast_spacing_zyx=(6.0, 6.0, 6.0), patch_size_zyx=(32, 64, 64),
        normalization=Normalization(-1024, 1500, -300.0, 500.0), overlap=0.25,
    )
    manifest = build_manifest(
        "tiny-random", tiny_encoder(),
        {"abdomen": ["Liver", "Spleen", "Kidney_L", "Kidney_R"], "spine": ["Bone_Vert_L1", "Bone_Vert_L2", "Liver"]},
        prep, description="random weights for tests",
    )
    return save_random_model(tmp_path_factory.mktemp("models") / "tiny", manifest, seed=3)


@pytest.fixture(scope="session")
def ct_crop(example_ct, tmp_path_factory) -> Path:
    """A 64×56×40 crop of the real CT (3 mm), small enough for fast end-to-end runs."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(example_ct))
    crop = img[30:94, 20:76, 50:90]
    path = tmp_path_factory.mktemp("data") / "ct_crop.nii.gz"
    sitk.WriteImage(crop, str(path))
    return path
