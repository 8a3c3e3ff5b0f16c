"""Image input/output: reading and checking CT inputs, writing segmentations and reports.

The names below are loaded on first use, so that ``clnet.io.atomic`` (the output-folder check the
CLI runs before anything else) does not pull in SimpleITK and numpy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LoadedImage": "read",
    "anatomy_statistics": "stats",
    "atomic_write": "atomic",
    "check_output_folder": "atomic",
    "dice_per_label": "evaluate",
    "prepare_output_folder": "atomic",
    "read_image": "read",
    "validate_ct": "validate",
    "write_dicom_seg": "dicom_seg",
    "write_json": "write",
    "write_label_image": "write",
    "write_preview_png": "preview",
    "write_seg_nrrd": "write",
    "write_statistics_csv": "stats",
    "statistics_json": "stats",
    "write_statistics_json": "stats",
}

__all__ = [
    "LoadedImage",
    "anatomy_statistics",
    "atomic_write",
    "check_output_folder",
    "dice_per_label",
    "prepare_output_folder",
    "read_image",
    "statistics_json",
    "validate_ct",
    "write_dicom_seg",
    "write_json",
    "write_label_image",
    "write_preview_png",
    "write_seg_nrrd",
    "write_statistics_csv",
    "write_statistics_json",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .atomic import atomic_write, check_output_folder, prepare_output_folder
    from .dicom_seg import write_dicom_seg
    from .evaluate import dice_per_label
    from .preview import write_preview_png
    from .read import LoadedImage, read_image
    from .stats import anatomy_statistics, statistics_json, write_statistics_csv, write_statistics_json
    from .validate import validate_ct
    from .write import write_json, write_label_image, write_seg_nrrd


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

