"""Which files of the official CL-Net release a set of heads needs, found by name wherever they sit.

The release (model hub repository ``legendchilli/clNet``) is an nnU-Net v1 ``results/`` tree::

    .../<TaskNNN_Name>/<Trainer>__<Plans>/plans.json, bpr_scores.json, all|fold_N/<checkpoint>
    .../public_bpr_model/model.pt, config.json, inference-settings.json

Nothing here touches the network or torch: the plan is computed from a file list (the hub's, or a
local copy's), so it also serves ``--list-heads`` and the Slicer dialog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..errors import ModelError

OFFICIAL_REPO = "legendchilli/clNet"
OFFICIAL_TRAINER = "clNetTrainerV2_SelectiveChannelDA_Continual_Decoding_Ensemble__clNetPlans"
# The order in which the importer looks for a task's checkpoint (clnet.official.importer.find_checkpoint
# without a configuration JSON): folds first, then file names. Only that one file is fetched.
CHECKPOINT_NAMES = ("model_final_checkpoint.model", "model_best.model", "model_latest.model")
FOLDS = ("all",) + tuple(f"fold_{i}" for i in range(10))
BPR_MODEL_FOLDER = "public_bpr_model"
BPR_MODEL_FILES = ("model.pt", "config.json", "inference-settings.json")
_TASK_RE = re.compile(r"^Task\d+_.+")


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the release: its path in the repository (``/``-separated) and what the hub records."""

    path: str
    size: int | None = None
    sha256: str | None = None  # Git LFS files: the sha256 of the content
    blob_id: str | None = None  # small files kept in git: the git blob id (sha1 of "blob <n>\0" + content)


@dataclass
class TaskFiles:
    """The files of one official task that the importer reads."""

    task: str
    folder: str  # <...>/<Task>/<Trainer>__<Plans>
    plans: ReleaseFile
    checkpoint: ReleaseFile | None
    bpr_scores: ReleaseFile | None
    heads: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[ReleaseFile]:
        return [f for f in (self.plans, self.checkpoint, self.bpr_scores) if f is not None]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


@dataclass(frozen=True)
class HeadInfo:
    """A head offered by the release, for listings and the Slicer dialog."""

    head: str  # official name, e.g. MERGED_ABDOMEN
    alias: str  # friendly name, e.g. abdomen
    task: str
    anatomies: int
    size: int | None  # bytes to download for this head (its task's files); None if not in the release
    available: bool


@dataclass
class DownloadPlan:
    """Everything one download needs: the encoder task, the heads' tasks and the body-part model."""

    heads: list[str]
    encoder: TaskFiles
    tasks: list[TaskFiles]
    bpr_model: list[ReleaseFile]
    root: str  # the repository folder to hand to the importer (common parent of all of the above)

    @property
    def files(self) -> list[ReleaseFile]:
        out = list(self.encoder.files)
        for t in self.tasks:
            out += t.files
        return out + list(self.bpr_model)

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def head_tasks() -> dict[str, tuple[str, int]]:
    """Official head → (its task folder name, number of anatomies), from the packaged decoders table."""
    from ..official.plans import official_label_table

    out: dict[str, tuple[str, int]] = {}
    for row in official_label_table():
        task, n = out.get(row.head, (row.source_task, 0))
        out[row.head] = (task, n + 1)
    return out


def alias_of(head: str) -> str:
    """Friendly name of an official head: ``MERGED_ABDOMEN`` → ``abdomen``, ``HN_LNS`` → ``hn_lns``."""
    name = head.lower()
    return name[len("merged_"):] if name.startswith("merged_") else name


def resolve_heads(names: Sequence[str] | None) -> list[str]:
    """Official head names for ``names`` (official or friendly, any case, ``-`` or ``_``); None → all."""
    known = list(head_tasks())
    if not names:
        return known
    lookup = {}
    for h in known:
        for key in (h, alias_of(h)):
            lookup[key.lower()] = h
            lookup[key.lower().replace("_", "-")] = h
    out, unknown = [], []
    for n in names:
        h = lookup.get(n.strip().lower())
        if h is None:
            unknown.append(n)
        elif h not in out:
            out.append(h)
    if unknown:
        raise ModelError(f"Unknown head(s) {unknown}.",
                         "Known heads (official name = friendly name): "
                         + ", ".join(f"{h} = {alias_of(h)}" for h in known) + ".")
    return out


def _index(files: Iterable[ReleaseFile]) -> dict[str, ReleaseFile]:
    return {f.path.strip("/"): f for f in files}


def _trainer_folders(index: dict[str, ReleaseFile]) -> dict[str, list[str]]:
    """Task name → repository folders ``.../<Task>/<Trainer>__<Plans>`` that hold a plans.json."""
    found: dict[str, list[str]] = {}
    for path in sorted(index):
        p = PurePosixPath(path)
        if p.name == "plans.json" and len(p.parts) >= 3 and "__" in p.parent.name and _TASK_RE.match(p.parent.parent.name):
            found.setdefault(p.parent.parent.name, []).append(str(p.parent))
    return found


def _pick_folder(task: str, folders: list[str]) -> str:
    if len(folders) == 1:
        return folders[0]
    # The importer's rule: the official trainer under 3d_fullres wins; anything else is ambiguous.
    preferred = [f for f in folders if PurePosixPath(f).name.replace("_DDP__", "__") == OFFICIAL_TRAINER
                 and PurePosixPath(f).parent.parent.name == "3d_fullres"]
    if len(preferred) == 1:
        return preferred[0]
    raise ModelError(f"The release holds task {task} more than once: {folders}.",
                     "Use --from with a copy that holds one results/ tree.")


def _task_files(task: str, folder: str, index: dict[str, ReleaseFile]) -> TaskFiles:
    checkpoint = next((index[f"{folder}/{fold}/{name}"] for fold in FOLDS for name in CHECKPOINT_NAMES
                       if f"{folder}/{fold}/{name}" in index), None)
    return TaskFiles(task=task, folder=folder, plans=index[f"{folder}/plans.json"], checkpoint=checkpoint,
                     bpr_scores=index.get(f"{folder}/bpr_scores.json"))


def _bpr_model(index: dict[str, ReleaseFile]) -> list[ReleaseFile]:
    """The body-part model folder's files (the shallowest copy when there are several)."""
    folders = sorted({str(PurePosixPath(p).parent) for p in index
                      if PurePosixPath(p).parent.name == BPR_MODEL_FOLDER and PurePosixPath(p).name in BPR_MODEL_FILES},
                     key=lambda f: (f.count("/"), f))
    if not folders:
        return []
    return [index[f"{folders[0]}/{n}"] for n in BPR_MODEL_FILES if f"{folders[0]}/{n}" in index]


class Release:
    """What a release (a hub revision or a local copy) holds, by task."""

    def __init__(self, files: Iterable[ReleaseFile], where: str) -> None:
        self.index = _index(files)
        self.where = where
        self.folders = _trainer_folders(self.index)
        self.bpr_model = _bpr_model(self.index)

    def task(self, task: str) -> TaskFiles | None:
        folders = self.folders.get(task)
        return _task_files(task, _pick_folder(task, folders), self.index) if folders else None

    def encoder_task(self) -> TaskFiles | None:
        names = [t for t in self.folders if "generalencoder" in t.lower()]
        if len(names) > 1:
            raise ModelError(f"The release holds several general-encoder tasks: {names}.",
                             "Use --from with a copy that holds one of them.")
        return self.task(names[0]) if names else None

    def heads(self) -> list[HeadInfo]:
        """Every official head, with its download size where the release has it."""
        out = []
        for head, (task, n) in head_tasks().items():
            tf = self.task(task)
            ok = tf is not None and tf.checkpoint is not None
            out.append(HeadInfo(head, alias_of(head), task, n, tf.size if ok else None, ok))
        return out

    def plan(self, heads: Sequence[str]) -> DownloadPlan:
        """The files for ``heads`` (official names); a clear error listing everything that is missing."""
        missing: list[str] = []
        encoder = self.encoder_task()
        if encoder is None:
            missing.append("the general encoder (a Task*_SuperGeneralEncoder/<Trainer>__<Plans>/plans.json)")
        elif encoder.checkpoint is None:
            missing.append(f"the general encoder's checkpoint ({encoder.folder}/all|fold_N/{CHECKPOINT_NAMES[0]})")
        table = head_tasks()
        by_task: dict[str, TaskFiles] = {}
        for head in heads:
            task = table[head][0]
            tf = by_task.get(task) or self.task(task)
            if tf is None:
                missing.append(f"{head}: task folder {task}/<Trainer>__<Plans>/plans.json")
                continue
            if tf.checkpoint is None:
                missing.append(f"{head}: checkpoint {tf.folder}/all|fold_N/{CHECKPOINT_NAMES[0]}")
                continue
            tf.heads.append(head)
            by_task[task] = tf
        if missing:
            raise ModelError(f"{self.where} lacks what the requested heads need: " + "; ".join(missing) + ".",
                             "Choose other heads (--list-heads shows what the release holds), or use "
                             "--from DIR|ZIP with a complete copy of the release.")
        assert encoder is not None
        tasks = list(by_task.values())
        parents = [str(PurePosixPath(t.folder).parent.parent) for t in [encoder, *tasks]]
        if self.bpr_model:
            parents.append(str(PurePosixPath(self.bpr_model[0].path).parent.parent))
        root = _common_folder(parents)
        return DownloadPlan(heads=list(heads), encoder=encoder, tasks=tasks, bpr_model=list(self.bpr_model), root=root)


def _common_folder(folders: Sequence[str]) -> str:
    parts = [PurePosixPath(f).parts if f not in ("", ".") else () for f in folders]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def format_size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
