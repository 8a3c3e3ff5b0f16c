"""Anatomy catalog: stable labels, names, regions, decoders, colors and DICOM terminology."""

from .anatomy import Anatomy
from .catalog import REGION_SLUGS, SHARED_STRUCTURES, Catalog, load_catalog
from .terminology import Code, Terminology

__all__ = [
    "REGION_SLUGS",
    "SHARED_STRUCTURES",
    "Anatomy",
    "Catalog",
    "Code",
    "Terminology",
    "load_catalog",
]
