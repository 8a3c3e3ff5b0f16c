"""Batch segmentation: many CTs, one model load, resumable, optionally on a Ray cluster.

>>> from clnet.batch import run_batch
>>> summary = run_batch(["/data/cts"], "/data/out", anatomies=["Liver"], fast=True)
>>> summary.exit_code, summary.counts
"""

from __future__ import annotations

# Lazy: `clnet` imports clnet.batch.cli to build its parser, which must not import torch.
_EXPORTS = {
    "BatchSummary": "runner",
    "run_batch": "runner",
    "Case": "cases",
    "discover_cases": "cases",
    "read_records": "manifest",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["BatchSummary", "Case", "discover_cases", "read_records", "run_batch"]
