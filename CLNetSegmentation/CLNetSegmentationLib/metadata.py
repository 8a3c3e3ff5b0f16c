"""Facts about the extension that several files repeat: repository, documentation, people, versions.

This is the one place that holds them. ``CMakeLists.txt``, ``CLNetExtension.s4ext`` and
``CLNetExtension.json`` must spell the URLs out literally (the Extensions Index reads them as text),
so ``Testing/test_install_fileset.py`` checks that each of them agrees with this file.
"""

from __future__ import annotations

REPOSITORY_URL = "https://github.com/clnet-segmentation/SlicerCLNet"
"""The public repository. Change it here first; the metadata test names every file to follow."""
BRANCH = "main"
DOCS_URL = f"{REPOSITORY_URL}/blob/{BRANCH}/docs/slicer.md"
RAW_URL = f"https://raw.githubusercontent.com/{REPOSITORY_URL.split('github.com/', 1)[1]}/{BRANCH}"
ICON_URL = f"{RAW_URL}/Resources/Icons/CLNetExtension.png"
SCREENSHOT_URL = f"{RAW_URL}/docs/images/slicer_panel.png"

CONTRIBUTORS = ["CLNet Segmentation developers (CLNet Segmentation project)"]
"""Names with organisation, as Slicer shows them ("Name (Organisation)")."""

MINIMUM_SLICER = "5.10"
MINIMUM_PYTHON = "3.12"
"""Slicer 5.10 is the first release with Python 3.12; the engine itself needs Python 3.10 or newer."""

HELP_TEXT = (
    "Segment up to 235 anatomies (organs, bones, vessels, muscles, lymph-node stations) in a CT with a "
    "CL-Net model: pick anatomies, press Segment, and edit the result in the Segment Editor. The model runs "
    "in a separate process, so Slicer stays responsive and Cancel stops it at once. "
    f"Needs 3D Slicer {MINIMUM_SLICER} or newer (Python {MINIMUM_PYTHON}). "
    "Not for clinical use unless the loaded model says otherwise (the bundled model is a demonstration). "
    f'See the <a href="{DOCS_URL}">documentation</a>.'
)

ACKNOWLEDGEMENT_TEXT = (
    "CL-Net (continual-learning segmentation: one general encoder, many organ-specific decoders) is by its "
    "original authors at Alibaba DAMO Academy (github.com/alibaba-damo-academy/clNet); this extension wraps "
    "an independent implementation of its engine. The example CT is from TotalSegmentator (Apache-2.0)."
)
