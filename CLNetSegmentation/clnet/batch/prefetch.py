"""Read the next cases in a background thread while the current one is segmented.

Image decoding (gzip, DICOM) and the network both release the GIL for most of their time, so
a reader thread hides most of the read time of the next case behind the current case's work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


class Prefetcher(Generic[T, R]):
    """Iterate ``(item, load(item) or the exception it raised)`` in input order.

    At most ``depth`` loaded items wait ahead of the consumer (bounding memory: each is a whole
    CT); ``depth=0`` loads each item inline, on demand, without a thread.
    """

    def __init__(self, items: Sequence[T], load: Callable[[T], R], depth: int = 2) -> None:
        self.items, self.load, self.depth = list(items), load, max(0, int(depth))
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(max(1, self.depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _call(self, item: T) -> R | BaseException:
        try:
            return self.load(item)
        except Exception as exc:  # handed to the consumer, which records it
            return exc

    def _produce(self) -> None:
        for item in self.items:
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            self._queue.put((item, self._call(item)))
        self._queue.put(_END)

    def __iter__(self) -> Iterator[tuple[T, R | BaseException]]:
        if self.depth == 0:
            for item in self.items:
                yield item, self._call(item)
            return
        self._thread = threading.Thread(target=self._produce, name="clnet-batch-reader", daemon=True)
        self._thread.start()
        try:
            while (got := self._queue.get()) is not _END:
                self._slots.release()
                yield got
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading ahead (e.g. after Ctrl-C); returns once the reader thread has finished."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
