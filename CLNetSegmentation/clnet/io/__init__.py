"""Image input/output: reading and checking CT inputs, writing segmentations and reports."""

from .atomic import atomic_write, check_output_folder
from .dicom_seg import write_dicom_seg
from .evaluate import dice_per_label
from .preview import write_preview_png
from .read import LoadedImage, read_image
from .stats import anatomy_statistics, write_statistics_csv
from .validate import validate_ct
from .write import write_json, write_label_image, write_seg_nrrd

__all__ = [
    "LoadedImage",
    "anatomy_statistics",
    "atomic_write",
    "check_output_folder",
    "dice_per_label",
    "read_image",
    "validate_ct",
    "write_dicom_seg",
    "write_json",
    "write_label_image",
    "write_preview_png",
    "write_seg_nrrd",
    "write_statistics_csv",
]
