"""First use inside Slicer: install what the engine needs, after asking.

torch always comes from the PyTorch extension (``PyTorchUtils``), which picks the CUDA build that
matches the GPU; nothing installed here may pull torch from the package index, so monai is
installed without its dependencies (it needs only numpy and torch, both already present).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

log = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.1"

# import name → pip requirement (torch excluded on purpose, see module docstring).
REQUIREMENTS: dict[str, str] = {
    "SimpleITK": "SimpleITK>=2.3",
    "scipy": "scipy>=1.10",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.60",
    "monai": "monai>=1.3",
}
NO_DEPS = {"monai"}


class DependencyError(RuntimeError):
    """Something needed could not be installed (the message says what to do)."""


def missingPackages() -> list[str]:
    """Import names from :data:`REQUIREMENTS` that are not importable."""
    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def torchInstalled() -> bool:
    return importlib.util.find_spec("torch") is not None


def _installTorch(askConfirmation: bool) -> bool:
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "CLNet Segmentation needs PyTorch, which is installed by the PyTorch extension.",
        ) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    return torch is not None


def _pipEnsureModule():
    """Slicer's high-level installer (Slicer ≥ 5.11: ``slicer.pydeps``), or None on older Slicer."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module
    return None


def _installPackages(names: list[str]) -> None:
    import slicer

    requirements = [REQUIREMENTS[n] for n in names]
    pydeps = _pipEnsureModule()
    if pydeps is not None:
        from packaging.requirements import Requirement

        pydeps.pip_ensure([Requirement(r) for r in requirements], skip_packages=["torch"],
                          requester="CLNetSegmentation")
        return
    plain = [REQUIREMENTS[n] for n in names if n not in NO_DEPS]
    if plain:
        slicer.util.pip_install(" ".join(plain))
    for name in names:
        if name in NO_DEPS:
            slicer.util.pip_install(f"{REQUIREMENTS[name]} --no-deps")


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Make torch and the engine's packages importable; False when the user declined.

    Raises :class:`DependencyError` when an install is impossible (e.g. no PyTorch extension).
    """
    import slicer

    if not torchInstalled() and not _installTorch(askConfirmation):
        return False
    missing = missingPackages()
    if missing:
        question = ("CLNet Segmentation needs these Python packages, which will be downloaded and "
                    f"installed now:\n\n{', '.join(REQUIREMENTS[n] for n in missing)}\n\nContinue?")
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(question, "CLNet Segmentation"):
            return False
        with slicer.util.WaitCursor():
            _installPackages(missing)
        importlib.invalidate_caches()
        still = missingPackages()
        if still:
            raise DependencyError(f"Could not install {', '.join(still)}; see the Python console for pip's output.")
    log.info("CLNet Segmentation dependencies are installed.")
    return True

