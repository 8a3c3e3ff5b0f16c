"""Inference: preprocessing, sliding window, merge, and the Segmenter that ties them together."""

from .segmenter import SegmentationResult, Segmenter

__all__ = ["SegmentationResult", "Segmenter"]
