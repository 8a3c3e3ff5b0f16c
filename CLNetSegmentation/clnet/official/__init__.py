"""Import the official CL-Net release (alibaba-damo-academy/clNet) into clnet's model format.

Only tensors are read (``torch.load(weights_only=True)``); see :mod:`clnet.official.reader`.
"""

from .importer import VARIANT, ImportReport, import_official
from .plans import OFFICIAL_WINDOWS, head_anatomies, official_label_table

__all__ = ["OFFICIAL_WINDOWS", "VARIANT", "ImportReport", "head_anatomies", "import_official", "official_label_table"]
