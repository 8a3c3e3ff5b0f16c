"""Qt-free parts of the CLNet Segmentation Slicer module (logic, MRML import, tree model).

Importing this package needs neither Qt nor torch; ``clnet`` is imported when first used.
"""

from .job import SegmentationJob
from .logic import MODEL_ATTRIBUTE, CLNetSegmentationLogic
from .segments import ANATOMY_TAG, LABEL_TAG, clnetSegmentIds, segmentTag

__all__ = [
    "ANATOMY_TAG",
    "LABEL_TAG",
    "MODEL_ATTRIBUTE",
    "CLNetSegmentationLogic",
    "SegmentationJob",
    "clnetSegmentIds",
    "segmentTag",
]
