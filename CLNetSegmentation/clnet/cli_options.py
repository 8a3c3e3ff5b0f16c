"""Options shared by `clnet segment` and `clnet batch`, so the two stay the same."""

from __future__ import annotations

import argparse

from .catalog.anatomy import NAME_STYLES

FORMAT_CHOICES = ["nifti", "seg.nrrd", "masks", "dicom-seg"]


def add_segment_options(p: argparse.ArgumentParser) -> None:
    """What to segment, how, and which files to write (everything but the input and -o)."""
    p.add_argument("--anatomies", nargs="+", metavar="NAME",
                   help="anatomies by catalog name (Kidney_L), display name (\"Left kidney\") or TotalSegmentator "
                        "name (kidney_left); `clnet anatomies` lists them")
    p.add_argument("--regions", nargs="+", metavar="REGION", help="e.g. thorax abdomen skeleton")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16"],
                   help="network arithmetic: auto = bf16 on a GPU, float32 on the CPU; bf16 on a CPU with native "
                        "bf16 is about 1.5x faster, labels differ slightly at edges (default auto)")
    p.add_argument("--no-locate", dest="locate", action="store_false", default=None,
                   help="for a subset, skip the coarse pass that finds the anatomies first and tile the whole body "
                        "slab instead (the coarse pass runs by default for subsets in normal mode)")
    p.add_argument("--official-compat", choices=["on", "off"], default=None,
                   help="follow the official CL-Net pipeline where clnet's differs (centred padding, official Gaussian "
                        "and tile steps, 3rd-order image resampling, official body crop; docs/official.md); default: "
                        "the model's setting (on for models made by `clnet import-official`)")
    p.add_argument("--fast", action="store_true", help="coarser spacing: faster, less detail")
    p.add_argument("--model", help="model folder or installed model name (default: the bundled model)")
    p.add_argument("--formats", nargs="+", default=["nifti"], choices=FORMAT_CHOICES, metavar="FORMAT",
                   help="one or more of: nifti (segmentation.nii.gz, default), seg.nrrd (Slicer segmentation), "
                        "masks (masks/NAME.nii.gz for every requested anatomy, empty when not found), "
                        "dicom-seg (for a DICOM input)")
    p.add_argument("--stats", action="store_true",
                   help="write statistics.csv and statistics.json (volume, HU per anatomy)")
    p.add_argument("--preview", action="store_true",
                   help="write preview.png (slices with the labels, orientation letters and a legend)")
    p.add_argument("--names", choices=NAME_STYLES, default="catalog",
                   help="file names of masks and keys of statistics.json: catalog names (Kidney_L, default) or "
                        "TotalSegmentator's class names (kidney_left)")
    p.add_argument("--overlap", type=float, help="tile overlap 0..0.9 (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per network call")
    p.add_argument("--force", action="store_true", help="run even if the image does not look like a CT")
    p.add_argument("--per-decoder", action="store_true",
                   help="also write decoders/<HEAD>.nii.gz with each decoder's own label values (official style)")
