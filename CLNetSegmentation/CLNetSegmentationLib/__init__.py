"""Qt-free parts of the CLNet Segmentation Slicer module (logic, worker process, MRML import, tree model).

Importing this package needs neither Qt nor torch; the engine runs in a worker process.
"""

from . import metadata
from .job import SegmentationJob
from .logic import MODEL_ATTRIBUTE, CLNetSegmentationLogic
from .process_job import ProcessJob
from .segments import ANATOMY_TAG, LABEL_TAG, clnetSegmentIds, segmentTag

__all__ = [
    "ANATOMY_TAG",
    "LABEL_TAG",
    "MODEL_ATTRIBUTE",
    "CLNetSegmentationLogic",
    "ProcessJob",
    "SegmentationJob",
    "clnetSegmentIds",
    "metadata",
    "segmentTag",
]
