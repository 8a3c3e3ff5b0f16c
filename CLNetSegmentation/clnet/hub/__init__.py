"""The official CL-Net release from the model hub (or a local copy of it), installed as a clnet model.

Light to import: ``huggingface_hub`` and torch are loaded only when a download or import runs.
"""

from .official import DownloadResult, Feedback, describe_release, download_official, downloads_dir
from .release import OFFICIAL_REPO, HeadInfo, resolve_heads

__all__ = ["OFFICIAL_REPO", "DownloadResult", "Feedback", "HeadInfo", "describe_release", "download_official",
           "downloads_dir", "resolve_heads"]
