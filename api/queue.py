"""The generation work queue: a bounded FIFO served by worker threads, off the event loop.

- A job is a function `run(cancel: threading.Event) -> Iterator[item]` (for ctxqa: `Answerer.stream`). Worker
  threads run jobs in submission order; every item a job yields is handed to the event loop through an
  `asyncio.Queue`, so a streaming response sees token deltas as they are produced.
- At most `capacity` jobs wait; `submit` raises `QueueFull` beyond that (the API answers 503 with a
  Retry-After estimated from recent job durations).
- `workers` jobs run at once: the generator's declared `max_concurrency` (1 for llama.cpp, which serialises
  requests; the batch size for ExLlamaV2: paged jobs with flash-attn, static batches without).
- `Job.cancel()` (a client disconnected) sets the job's `threading.Event`: a waiting job is dropped before it
  starts, a running one stops at the next token (the backends check the event between tokens).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ctxqa.api.metrics import Metrics

log = logging.getLogger("ctxqa.api.queue")

_END = object()


class QueueFull(RuntimeError):
    def __init__(self, capacity: int, retry_after: int) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        super().__init__(f"the generation queue is full ({capacity} waiting); retry in about {retry_after}s")


class QueueClosed(RuntimeError):
    pass


class Job:
    def __init__(self, run: Callable[[threading.Event], Iterator[Any]], loop: asyncio.AbstractEventLoop,
                 label: str = "") -> None:
        self.run = run
        self.loop = loop
        self.label = label
        self.cancel_event = threading.Event()
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished = False
        self.cancelled = False  # cancelled before it finished (counted once)
        self._lock = threading.Lock()

    # called from the worker thread
    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
            self.cancel_event.set()

    def cancel(self) -> bool:
        """Ask the job to stop; returns True when this call cancelled a job that had not finished."""
        with self._lock:
            if self.finished or self.cancel_event.is_set():
                return False
            self.cancel_event.set()
            self.cancelled = True
            return True

    async def events(self) -> AsyncIterator[Any]:
        """Items as the job yields them; re-raises the job's exception, if any, in the event loop."""
        while True:
            item = await self.items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class GenerationQueue:
    def __init__(self, capacity: int, workers: int = 1, metrics: Metrics | None = None) -> None:
        self.capacity = max(0, int(capacity))
        self.workers = max(1, int(workers))
        self.metrics = metrics
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._active = 0
        self._closed = False
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self._threads = [threading.Thread(target=self._worker, name=f"ctxqa-gen-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()
        if metrics:
            metrics.queue_capacity.set(self.capacity)
            metrics.queue_workers.set(self.workers)

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._cv:
            return len(self._pending)

    @property
    def active(self) -> int:
        with self._cv:
            return self._active

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: recent mean job time x jobs ahead / workers (at least 1)."""
        with self._cv:
            mean = sum(self._durations) / len(self._durations) if self._durations else 2.0
            ahead = len(self._pending) + self._active
        return max(1, min(300, math.ceil(mean * max(1, ahead) / self.workers)))

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.queue_active.set(self._active)

    # -- submit / cancel -----------------------------------------------------------------------------------
    def submit(self, run: Callable[[threading.Event], Iterator[Any]], label: str = "") -> Job:
        """Queue a job (call from the event loop). Raises QueueFull when `capacity` jobs already wait and no
        worker is idle."""
        job = Job(run, asyncio.get_running_loop(), label)
        with self._cv:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            idle = self.workers - self._active - len(self._pending)
            if idle <= 0 and len(self._pending) >= self.capacity:
                if self.metrics:
                    self.metrics.rejected.inc()
                mean = sum(self._durations) / len(self._durations) if self._durations else 2.0
                retry = max(1, min(300, math.ceil(mean * (len(self._pending) + self._active) / self.workers)))
                raise QueueFull(self.capacity, retry)
            self._pending.append(job)
            self._gauges()
            self._cv.notify()
        return job

    def cancel(self, job: Job) -> None:
        if not job.cancel():
            return
        if self.metrics:
            self.metrics.cancelled.inc()
        with self._cv:
            try:
                self._pending.remove(job)
            except ValueError:
                return  # already running: the worker sees the event between tokens
            self._gauges()
        job.finished = True
        job._put(_END)

    # -- workers -------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                self._active += 1
                self._gauges()
            job.started = time.perf_counter()
            if self.metrics:
                self.metrics.queue_wait.observe(job.started - job.submitted)
            try:
                if not job.cancel_event.is_set():
                    for item in job.run(job.cancel_event):
                        job._put(item)
            except BaseException as exc:  # noqa: BLE001 - delivered to the request that owns the job
                job._put(_Failure(exc))
            finally:
                took = time.perf_counter() - job.started
                with job._lock:
                    job.finished = True
                job._put(_END)
                with self._cv:
                    self._active -= 1
                    self._durations.append(took)
                    self._gauges()
                if self.metrics:
                    self.metrics.generation_seconds.observe(took)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel waiting and running jobs and stop the workers."""
        with self._cv:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in pending:
            job.cancel()
            job._put(_END)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
