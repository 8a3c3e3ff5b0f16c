"""Write docs/images/slicer_panel.png: the CLNet Segmentation panel rendered with PySide6.

Run from the repository root:  QT_QPA_PLATFORM=offscreen python scripts/make_screenshot.py
The panel comes from the module's own Panel / tree code; anatomies outside the official CL-Net
decoders (or the bundled demo model, when present) show as disabled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CLNetSegmentation"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from clnet.catalog import load_catalog  # noqa: E402
from CLNetSegmentationLib.screenshot import officialAnatomyNames, savePanelScreenshot  # noqa: E402


def main() -> None:
    catalog = load_catalog()
    out = ROOT / "docs" / "images" / "slicer_panel.png"
    savePanelScreenshot(out, catalog, officialAnatomyNames(catalog))
    print(out)


if __name__ == "__main__":
    main()
