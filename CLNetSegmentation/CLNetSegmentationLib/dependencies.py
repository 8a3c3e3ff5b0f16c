"""First use inside Slicer: install what the engine needs into Slicer's Python, after asking once.

Called when the user presses Segment (or installs a model), never at module import. The worker
process runs Slicer's own Python (``PythonSlicer``), so what is installed here is what it imports.

- torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build that matches the
  GPU. Nothing installed here may pull torch from the package index, so monai (which needs only
  numpy and torch) is installed without its dependencies.
- The other packages go through ``slicer.packaging.pip_ensure`` (Slicer 5.12+, with its progress
  dialog) or ``slicer.util.pip_install`` (Slicer 5.10).

Every failure (declined, no PyTorch extension, pip error, no network) becomes a
:class:`DependencyError` whose message says what to do; the widget shows it in a message box.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import subprocess

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


def manualInstructions(missing: list[str]) -> str:
    """How to install ``missing`` by hand from Slicer's Python console (torch excluded)."""
    plain = " ".join(REQUIREMENTS[n] for n in missing if n not in NO_DEPS)
    commands = ([f"slicer.util.pip_install('{plain}')"] if plain else []) + [
        f"slicer.util.pip_install('{REQUIREMENTS[n]} --no-deps')" for n in missing if n in NO_DEPS]
    text = f"By hand, in Slicer's Python console: {'; '.join(commands)}." if commands else ""
    return (text + " PyTorch: use the PyTorch Utils module.").strip()


class DependencyError(RuntimeError):
    """Something needed is missing and could not be installed (the message says what to do)."""


def missingPackages() -> list[str]:
    """Import names from :data:`REQUIREMENTS` that are not importable."""
    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def torchInstalled() -> bool:
    return importlib.util.find_spec("torch") is not None


def _pytorchUtils():
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "CLNet Segmentation needs PyTorch, which is installed through the PyTorch extension, and that "
            "extension is not installed.",
        ) from None
    return PyTorchUtils


def _pipEnsure():
    """``slicer.packaging.pip_ensure`` (Slicer 5.12 and newer), or None."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def _installPackages(names: list[str]) -> None:
    import slicer

    requirements = [REQUIREMENTS[n] for n in names]
    pipEnsure = _pipEnsure()
    if pipEnsure is not None:  # asked already: no second prompt; shows its own progress dialog
        pipEnsure(requirements, skip_packages=["torch"], prompt_install=False, requester="CLNet Segmentation")
        return
    plain = [REQUIREMENTS[n] for n in names if n not in NO_DEPS]
    if plain:
        slicer.util.pip_install(" ".join(plain))
    for name in names:
        if name in NO_DEPS:
            slicer.util.pip_install(f"{REQUIREMENTS[name]} --no-deps")


@contextlib.contextmanager
def _busy(text: str):
    """A wait cursor and an indeterminate progress dialog while a blocking install runs."""
    import slicer

    dialog = slicer.util.createProgressDialog(labelText=text, maximum=0, windowTitle="CLNet Segmentation")
    slicer.app.processEvents()
    try:
        with slicer.util.WaitCursor():
            yield
    finally:
        dialog.close()


def ensureDependencies(askConfirmation: bool = True) -> None:
    """Make torch and the engine's packages importable in Slicer's Python, asking once first.

    Returns when everything is there; raises :class:`DependencyError` otherwise (also when the
    user declines), with a message that says what to do.
    """
    import slicer

    needTorch = not torchInstalled()
    missing = missingPackages()
    if not needTorch and not missing:
        return
    items = (["PyTorch (through the PyTorch extension; several minutes, up to a few GB)"] if needTorch else []) + [
        REQUIREMENTS[n] for n in missing]
    question = ("CLNet Segmentation needs these Python packages, which will be downloaded and installed into "
                "Slicer's Python now:\n\n- " + "\n- ".join(items) + "\n\nContinue?")
    manual = manualInstructions(missing)
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(question, "CLNet Segmentation"):
        raise DependencyError("CLNet Segmentation cannot run without these packages: " + ", ".join(items) + ". "
                              "Press Segment again and accept the installation. " + manual)
    try:
        if needTorch:
            utils = _pytorchUtils()
            with _busy("Installing PyTorch (this can take several minutes)..."):
                torch = utils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                               torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise DependencyError("PyTorch was not installed.")
        if missing:
            if _pipEnsure() is None:
                with _busy("Installing Python packages for CLNet Segmentation..."):
                    _installPackages(missing)
            else:
                _installPackages(missing)
    except DependencyError as exc:
        raise DependencyError(f"{exc} Install the PyTorch extension from the Extensions Manager, restart "
                              "Slicer, and press Segment again.") from None
    except subprocess.CalledProcessError as exc:
        raise DependencyError(
            f"Installing the packages failed (pip exit code {exc.returncode}); the Python console shows pip's "
            "output. Check the internet connection (and proxy settings), then press Segment again. " + manual,
        ) from exc
    except Exception as exc:  # no network, PyTorchUtils/light-the-torch errors, declined pip_ensure...
        raise DependencyError(
            f"Installing the packages failed: {exc}. Check the internet connection, then press Segment again. "
            + manual) from exc
    importlib.invalidate_caches()
    still = missingPackages() + (["torch"] if not torchInstalled() else [])
    if still:
        raise DependencyError(f"{', '.join(still)} still cannot be imported after the installation. Restart "
                              "Slicer and press Segment again. " + manual)
    log.info("CLNet Segmentation dependencies are installed.")
