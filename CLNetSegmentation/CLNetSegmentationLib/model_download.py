"""Download the official CL-Net model from the panel: the heads dialog and the worker-process jobs.

Both steps run the CLI in a worker process (:class:`~.process_job.ProcessJob`), exactly like a
segmentation: ``clnet models download official --list-heads`` for the dialog's list and sizes, then
``clnet models download official --heads … --set-default`` with progress events and cancel.
This process never imports ``huggingface_hub`` or torch.

:class:`ModelDownloader` is the panel's side: it owns the model selector's "Download…" entry,
keeps the selector off that entry (back on the previous model on cancel or error), follows the
job on a timer and selects the installed model when it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .process_job import ProcessJob

DOWNLOAD_LABEL = "Download the official CL-Net model…"
DOWNLOAD_VALUE = "clnet:download-official"
"""Data of the selector's download entry (never a model spec; never stored in the parameter node)."""

LIST_TIMEOUT_SECONDS = 120.0


def formatSize(n: int | None) -> str:
    """Bytes as a short human size ('?' when unknown)."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def listHeadsJob() -> ProcessJob:
    """A not-started job whose result event lists the release's heads (``heads``, ``common_bytes``)."""
    return ProcessJob(["models", "download", "official", "--list-heads", "--progress", "json"], task="download")


def downloadJob(heads: Sequence[str] | None = None, setDefault: bool = True) -> ProcessJob:
    """A not-started job that downloads, verifies and installs the official model (all heads when
    ``heads`` is empty); its result event is the CLI's ``DownloadResult`` (``model``, ``path``…)."""
    args = ["models", "download", "official"]
    if setDefault:
        args.append("--set-default")
    if heads:
        args += ["--heads", *heads]
    return ProcessJob([*args, "--progress", "json"], task="download")


def listHeads(timeout: float = LIST_TIMEOUT_SECONDS) -> tuple[list[dict], int]:
    """(heads, bytes every download needs) from the release, read in a worker process (blocking).
    Raises the worker's error (e.g. no network, with the ``--from`` hint)."""
    job = listHeadsJob().start()
    if not job.wait(timeout=timeout):
        job.discard()
        from .worker_errors import WorkerError

        raise WorkerError(f"Listing the official release took more than {timeout:.0f} s.",
                          "Check the network connection (or HF_ENDPOINT), then try again.")
    event = job.finish()
    return list(event.get("heads", [])), int(event.get("common_bytes") or 0)


def _withWaitCursor(function: Callable):
    """``function()`` under a busy cursor (the listing is short and blocks the panel)."""
    from .qt_compat import qt

    qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        return function()
    finally:
        qt.QApplication.restoreOverrideCursor()


class HeadsDialog:
    """Checkboxes for the release's heads with their download sizes and the running total."""

    def __init__(self, heads: list[dict], commonBytes: int, parent=None) -> None:
        from .qt_compat import qt

        self.heads = heads
        self.commonBytes = commonBytes
        self.dialog = qt.QDialog(parent) if parent is not None else qt.QDialog()
        self.dialog.setWindowTitle("Download the official CL-Net model")
        layout = qt.QVBoxLayout(self.dialog)
        intro = qt.QLabel("Choose the heads (decoders) to install. The model is downloaded from the model hub "
                          "(legendchilli/clNet), checked, converted and made the default model. Research weights, "
                          "not for clinical use.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.checkBoxes: dict[str, object] = {}
        for h in heads:
            text = f"{h['alias']}  ({h['head']}, {h['anatomies']} anatomies, {formatSize(h.get('size'))})"
            box = qt.QCheckBox(text if h.get("available", True) else f"{text}: missing from the release")
            box.setChecked(bool(h.get("available", True)))
            box.setEnabled(bool(h.get("available", True)))
            box.toggled.connect(lambda _checked: self._update())
            layout.addWidget(box)
            self.checkBoxes[h["head"]] = box
        self.totalLabel = qt.QLabel("")
        layout.addWidget(self.totalLabel)
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.dialog.accept)
        buttons.rejected.connect(self.dialog.reject)
        self.okButton = buttons.button(qt.QDialogButtonBox.Ok)
        self.okButton.setText("Download")
        layout.addWidget(buttons)
        self._update()

    def chosen(self) -> list[str]:
        """Official names of the checked heads, in release order."""
        return [head for head, box in self.checkBoxes.items() if box.isChecked()]

    def totalBytes(self) -> int:
        sizes = {h["head"]: h.get("size") or 0 for h in self.heads}
        return self.commonBytes + sum(sizes[h] for h in self.chosen())

    def _update(self) -> None:
        chosen = self.chosen()
        self.totalLabel.setText(f"Download: {formatSize(self.totalBytes())} for {len(chosen)} head(s) "
                                f"(including the shared encoder and body-part model, {formatSize(self.commonBytes)})")
        self.okButton.setEnabled(bool(chosen))

    def run(self) -> list[str] | None:
        """Show the dialog modally: the chosen heads, or None when cancelled."""
        execute = getattr(self.dialog, "exec", None) or self.dialog.exec_
        accepted = bool(execute())
        self.dialog.deleteLater()
        return self.chosen() if accepted else None


class ModelDownloader:
    """The panel's download flow: selector entry → heads dialog → worker job → model selected.

    ``refreshModels(select)`` refills the selector and selects ``select`` (a model path);
    ``showError(exc, details, log)`` shows one message box; ``log(text)`` writes the panel log.
    """

    def __init__(self, panel, refreshModels: Callable[[str], None], showError: Callable, log: Callable[[str], None],
                 askHeads: Callable[[list[dict], int], list[str] | None] | None = None) -> None:
        from .qt_compat import qt

        self.panel = panel
        self.refreshModels = refreshModels
        self.showError = showError
        self.log = log
        self.askHeads = askHeads or (lambda heads, common: HeadsDialog(heads, common).run())
        self.job: ProcessJob | None = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll)

    @property
    def busy(self) -> bool:
        return self.job is not None

    def handleSelection(self, previous: str) -> bool:
        """Call when the selector changed: True when it was the download entry (then the selector is
        back on ``previous`` and the download, if confirmed, has started)."""
        from .qt_compat import value

        combo = self.panel.modelCombo
        if value(combo, "currentData") != DOWNLOAD_VALUE:
            return False
        combo.blockSignals(True)  # never left on the entry, whatever happens next
        combo.setCurrentIndex(max(0, combo.findData(previous)))
        combo.blockSignals(False)
        self.start()
        return True

    def start(self, heads: Sequence[str] | None = None) -> ProcessJob | None:
        """Ask for the heads (unless given) and start the download; None when cancelled or failed."""
        if self.job is not None:
            return None
        try:
            if heads is None:
                self.panel.setProgress("Reading the official release…", 0.0)
                heads = self.askHeads(*_withWaitCursor(listHeads))
                if heads is None:
                    self.panel.setProgress("Ready", 0.0)
                    return None
            self.job = downloadJob(heads).start()
        except Exception as exc:
            self.panel.setProgress("Failed", 0.0)
            self.showError(exc, "", self.log)
            return None
        self.log(f"Downloading the official CL-Net model ({', '.join(heads) or 'all heads'})…")
        self.panel.setRunning(True)
        self.timer.start()
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.log("Cancelling the download…")

    def discard(self) -> None:
        self.timer.stop()
        if self.job is not None:
            self.job.discard()
            self.job = None

    def poll(self) -> None:
        """QTimer slot: progress and messages; once ended, select the model or report the error."""
        job = self.job
        if job is None:
            self.timer.stop()
            return
        if not job.pollInto(self.panel.setProgress, self.log):
            return
        self.timer.stop()
        self.job = None
        self.panel.setRunning(False)
        from clnet.errors import CancelledError

        try:
            result = job.finish()
        except CancelledError as exc:
            self.panel.setProgress("Cancelled", 0.0)
            self.log(f"{exc} Nothing was installed.")
            return
        except Exception as exc:
            self.panel.setProgress("Failed", 0.0)
            self.showError(exc, job.details, self.log)
            return
        state = "Up to date" if result.get("up_to_date") else "Installed"
        self.panel.setProgress(f"{state}: {result.get('model')}", 1.0)
        self.log(f"{state}: {result.get('model')} at {result.get('path')} (heads {', '.join(result.get('heads', []))}, "
                 f"downloaded {formatSize(result.get('downloaded_bytes'))}); it is now the default model.")
        self.refreshModels(str(result.get("path")))


__all__ = ["DOWNLOAD_LABEL", "DOWNLOAD_VALUE", "HeadsDialog", "ModelDownloader", "downloadJob", "formatSize",
           "listHeads", "listHeadsJob"]
