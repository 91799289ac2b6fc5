"""Request coalescing: concurrent requests' keys are handled by one call in one background thread.

Scoring one customer costs about as much fixed overhead (encoding, booster calls) as scoring fifty,
so under load the worker takes every request queued while it was busy and runs `fn` once on the
union of their keys. It waits up to `max_wait_s` for more only while the previous call served
several requests (a sign of concurrent load): at low load a request runs alone with no added wait.
Results are row-wise, so they do not depend on the company a key keeps. Every caller gets the
whole result of its batch (or the batch's exception) via a future.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")
_STOP = object()


@dataclass(frozen=True)
class _Job:
    keys: Sequence[str]
    future: concurrent.futures.Future[Any]


class MicroBatcher(Generic[R]):
    """Run `fn(keys)` for the union of the keys of requests that arrive together."""

    def __init__(self, fn: Callable[[list[str]], R], *, max_keys: int, max_wait_s: float = 0.0, name: str = "batcher"):
        self.fn = fn
        self.max_keys = max_keys
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.calls = 0
        self.requests = 0
        self._last_batch = 0  # requests served by the previous call

    def submit(self, keys: Sequence[str]) -> concurrent.futures.Future[R]:
        """Queue one request's keys; the future resolves to `fn`'s result for a superset of them."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the scoring worker has stopped (service shutting down)"))
        else:
            self._queue.put(_Job(keys, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued requests, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.keys)
        patience = self.max_wait_s if self._last_batch > 1 else 0.0
        deadline = time.monotonic() + patience
        while n < self.max_keys:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            n += len(job.keys)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stopping = self._collect(first)
            self._last_batch = len(jobs)
            keys = list(dict.fromkeys(k for job in jobs for k in job.keys))
            self.calls += 1
            self.requests += len(jobs)
            try:
                result = self.fn(keys)
            except BaseException as e:  # every caller of the batch sees the failure
                log.exception("batched call failed for %d requests", len(jobs))
                for job in jobs:
                    job.future.set_exception(e)
            else:
                for job in jobs:
                    job.future.set_result(result)
        while True:  # requests that raced with close(): fail them rather than leave them hanging
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.future.set_exception(RuntimeError("the scoring worker has stopped (service shutting down)"))
