"""Run a batch on Ray: actors that each load the model once segment cases in parallel.

Workers read the input and write the case folder themselves, so inputs, OUTDIR and the model
folder must be on storage every node sees under the same path. The driver only dispatches
cases, retries transient failures and keeps the manifest, with the same resume rules as the
local runner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from ..errors import ClnetError
from .cases import Case
from .job import (
    JobContext,
    SegmentOptions,
    failure_fields,
    model_identity,
    run_case,
    settings_key,
    skipped_record,
)
from .manifest import ManifestWriter, write_summary_csv
from .progress import BatchProgress, NoProgress
from .resume import verified_done

_IN_FLIGHT_PER_WORKER = 2  # the next case waits in the actor's queue: no idle gap between cases
_DEFAULT_CPUS_PER_WORKER = 4


class SegmentWorker:
    """Ray actor body: one Segmenter (one model load) serving many cases."""

    def __init__(self, model: str | None, device: str, batch_size: int, precision: str = "auto",
                 official_compat: bool | str | None = None) -> None:
        from ..inference import Segmenter

        self.segmenter = Segmenter(model, device=device, batch_size=batch_size, precision=precision,
                                   official_compat=official_compat)

    def describe(self, anatomies: Sequence[str] | None, regions: Sequence[str] | None) -> dict:
        """The model identity; raises ClnetError when the anatomy selection is invalid."""
        self.segmenter.resolve(anatomies, regions)
        return {**model_identity(self.segmenter.manifest, self.segmenter.model.directory),
                "official_compat": self.segmenter.official_compat_enabled}

    def run(self, case: Case, options: SegmentOptions, ctx: JobContext, attempt: int) -> dict:
        from ..io import read_image, validate_ct

        t = time.perf_counter()
        try:
            loaded = read_image(case.input)
            validate_ct(loaded.image, force=options.force)
        except Exception as exc:  # recorded by run_case like any other per-case failure
            loaded = exc
        return run_case(self.segmenter, case, loaded, time.perf_counter() - t, options, ctx, attempt=attempt)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClnetError("Ray is not installed.", 'Install it with: pip install "clnet-segmentation[ray]"') from None
    return ray


def connect(ray, address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a private local instance; True if we started/joined it
    (and so must shut it down). An already initialised Ray (e.g. by the caller) is reused."""
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        # A fresh single-machine instance bound to loopback: nothing is exposed to the network.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _worker_plan(ray, device: str, workers: int | None, cpus_per_worker: int | None) -> tuple[int, dict]:
    """How many actors to start and what each one requests from the scheduler."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus and (device == "auto" or device.startswith("cuda")):
        return workers or gpus, {"num_gpus": 1, "num_cpus": cpus_per_worker or 1}
    per = max(1, min(cpus_per_worker or _DEFAULT_CPUS_PER_WORKER, cpus))
    return workers or max(1, cpus // per), {"num_cpus": per}


def run_on_ray(cases: Sequence[Case], out: Path, options: SegmentOptions, *, model=None, device: str = "auto",
               batch_size: int = 1, precision: str = "auto",
               official_compat: bool | str | None = None, address: str | None = None, workers: int | None = None,
               cpus_per_worker: int | None = None, resume: bool = True, retries: int = 2,
               progress: BatchProgress | None = None) -> list[dict]:
    """Segment ``cases`` with Ray actors; returns the final record of every case."""
    ray = _import_ray()
    from ..registry import resolve_model

    model_dir = str(resolve_model(model).resolve())  # absolute: workers may run elsewhere
    progress = progress or NoProgress()
    owned = connect(ray, address)
    actor_cls = ray.remote(max_restarts=2, max_task_retries=2)(SegmentWorker)
    try:
        n, request = _worker_plan(ray, device, workers, cpus_per_worker)
        actors = [actor_cls.options(**request).remote(model_dir, device, batch_size, precision, official_compat)
                  for _ in range(min(n, len(cases)))]
        model_info = _describe(ray, actors[0], options)
        ctx = JobContext(out, model_info, settings_key(model_info, options), uuid.uuid4().hex[:12], backend="ray")
        return _dispatch(ray, actors, cases, options, ctx, resume, retries, progress)
    finally:
        progress.close()
        if owned:
            ray.shutdown()


def _clnet_cause(exc: BaseException) -> ClnetError | None:
    """The ClnetError inside a Ray error, if any (Ray wraps a worker's exception, and an actor
    whose constructor failed wraps that task error once more)."""
    for _ in range(4):
        if isinstance(exc, ClnetError):
            return exc
        inner = getattr(exc, "cause", None)
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None:
            return None
        exc = inner
    return None


def _describe(ray, actor, options: SegmentOptions) -> dict:
    try:
        return ray.get(actor.describe.remote(options.anatomies, options.regions))
    except ray.exceptions.RayError as exc:
        cause = _clnet_cause(exc)
        if cause is not None:  # bad model or anatomy names: every case would fail the same way
            raise ClnetError(cause.message, cause.hint) from None
        raise


def _dispatch(ray, actors: list, cases: Sequence[Case], options: SegmentOptions, ctx: JobContext, resume: bool,
              retries: int, progress: BatchProgress) -> list[dict]:
    writer = ManifestWriter(ctx.out_dir)
    final: dict[str, dict] = {}
    progress.start(len(cases))

    def finish(record: dict) -> None:
        writer.append(record)
        progress.finished(record)
        if record["status"] != "retrying":
            final[record["id"]] = record

    todo: deque[tuple[Case, int]] = deque()
    for case in cases:  # the driver checks resume, so skipped cases never reach a worker
        done = verified_done(ctx.out_dir / case.id, ctx.settings_key) if resume else None
        if done is not None:
            writer.recover(done)
            finish(skipped_record(ctx, case, done))
        else:
            todo.append((case, 1))
    in_flight: dict = {}  # object ref → (case, attempt, actor index)
    load = [0] * len(actors)
    try:
        while todo or in_flight:
            while todo and min(load) < _IN_FLIGHT_PER_WORKER:
                i = load.index(min(load))
                case, attempt = todo.popleft()
                in_flight[actors[i].run.remote(case, options, ctx, attempt)] = (case, attempt, i)
                load[i] += 1
                progress.stage(case.id, "running on Ray", 0.0)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            case, attempt, i = in_flight.pop(ready[0])
            load[i] -= 1
            try:
                record = ray.get(ready[0])
            except (ray.exceptions.RayError, OSError) as exc:  # worker or node died after Ray's own retries
                record = ctx.record(case, "failed", outputs=None, attempt=attempt,
                                    **failure_fields(_clnet_cause(exc) or exc))
            if record["status"] == "failed" and record.get("retryable") and attempt <= retries:
                # Not a ClnetError (those are about the input and would fail again): maybe
                # transient (out of memory, I/O hiccup, lost worker), so try once more.
                record["status"] = "retrying"
                todo.append((case, attempt + 1))
            finish(record)
    finally:
        for ref in in_flight:  # only left after an interruption; best effort
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        records = [final[c.id] for c in cases if c.id in final]
        if records:
            write_summary_csv(ctx.out_dir, records)
    return records
