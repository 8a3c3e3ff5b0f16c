"""Progress display for batch runs: one bar over all cases, showing the current case's stage."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from typing import Protocol


class BatchProgress(Protocol):
    """What the runners report to; implement it to drive another UI."""

    def start(self, total: int) -> None: ...
    def stage(self, case_id: str, text: str, fraction: float) -> None: ...
    def finished(self, record: Mapping) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, total: int) -> None:
        pass

    def stage(self, case_id: str, text: str, fraction: float) -> None:
        pass

    def finished(self, record: Mapping) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A tqdm bar on stderr: cases done (fractional within the running case), the failures so
    far, the running case's id and stage. Failures are printed above the bar as they happen."""

    _SCALE = 1000

    def __init__(self) -> None:
        self.bar = None
        self.done = 0
        self.counts: Counter = Counter()

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.bar = tqdm(total=max(total, 1) * self._SCALE, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc:<56.56} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def _describe(self, text: str) -> None:
        c = self.counts
        self.bar.set_description_str(f"[{self.done}/{self.total}, {c['failed']} failed] {text}", refresh=False)

    def stage(self, case_id: str, text: str, fraction: float) -> None:
        if self.bar is None:
            return
        self._describe(f"{case_id}: {text}")
        self.bar.n = int((self.done + min(max(fraction, 0.0), 0.999)) * self._SCALE)
        self.bar.refresh()

    def finished(self, record: Mapping) -> None:
        if self.bar is None:
            return
        status = record["status"]
        if status == "retrying":
            self.bar.write(f"retrying {record['id']}: {record.get('error')}", file=sys.stderr)
            return
        self.done += 1
        self.counts[status] += 1
        if status == "failed":
            self.bar.write(f"failed {record['id']}: {record.get('error')}", file=sys.stderr)
        self.bar.n = self.done * self._SCALE
        self._describe(f"{record['id']}: {status}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
