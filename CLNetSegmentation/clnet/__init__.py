"""clnet: CL-Net whole-body CT segmentation (one general encoder, many decoders)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import clnet` (e.g. for the catalog) does not import torch.
    if name in ("Segmenter", "SegmentationResult"):
        from .inference import segmenter

        return getattr(segmenter, name)
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    if name == "load_catalog":
        from .catalog import load_catalog

        return load_catalog
    raise AttributeError(name)


__all__ = ["SegmentationResult", "Segmenter", "__version__", "load_catalog", "load_model"]
