"""What the panel shows about this machine and the installed models (torch imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path

DEVICE_CHOICES: list[tuple[str, str]] = [
    ("Auto (GPU when available)", "auto"),
    ("CUDA GPU", "cuda"),
    ("CPU", "cpu"),
]
"""(label, value passed to the engine) for the device selector."""

DEFAULT_MODEL_LABEL = "Default model"


def torchSummary() -> str:
    """One line: torch version and the GPU it sees (or why there is none)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed yet; it is installed on the first run."
    if torch.cuda.is_available():
        return f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name(0)}"
    return f"torch {torch.__version__}, no CUDA GPU (runs on CPU)"


def modelChoices() -> list[tuple[str, str]]:
    """(label, value) for the model selector: the default first, then every model found.

    An empty value means "clnet's default" (``$CLNET_MODEL`` or the bundled model).
    """
    choices = [(DEFAULT_MODEL_LABEL, "")]
    try:
        from clnet.registry import list_models
    except ImportError:  # engine dependencies not installed yet
        return choices
    for name, path, manifest in list_models():
        label = f"{name} ({manifest.version})" if manifest is not None and manifest.version else name
        if manifest is None:
            label += " [unreadable]"
        choices.append((label, str(path)))
    return choices


def installModel(source: str | os.PathLike) -> Path:
    """Verify (sha256 of every file) and copy a model folder or .zip into the per-user folder."""
    from clnet.registry import install_model

    return install_model(source, overwrite=False)


def chooseAndInstallModel(folder: bool):
    """Ask for a model folder (or .zip), then verify and install it; the installed folder, or None when
    the dialog was cancelled. Raises ``ClnetError`` / ``DependencyError`` with what to do."""
    import slicer

    from .dependencies import ensureDependencies
    from .qt_compat import qt

    if folder:
        source = qt.QFileDialog.getExistingDirectory(None, "CL-Net model folder")
    else:
        source = qt.QFileDialog.getOpenFileName(None, "CL-Net model archive", "", "Model archive (*.zip)")
    if not source:
        return None
    ensureDependencies()
    with slicer.util.WaitCursor():
        return installModel(source)
