"""The dynamic batcher: concurrent requests coalesced into one engine call each.

Requests arrive one by one on the event loop; the batcher queues them and a single
loop task turns the queue into batches::

    submit(job, n_rows, n_tokens) ─► queue ─► [job, job, job] ─► run_batch (worker thread)
                                                                   │
    each awaiting request ◄──────────── its own result ◄───────────┘

A batch opens with the oldest queued request and closes when the next request
would pass ``max_batch_tokens`` (a request larger than the budget runs alone,
whole), when it holds ``max_batch_requests`` requests, or ``max_wait_ms`` after its
first request arrived, whichever comes first. Requests queued while a batch runs
are taken at once for the next one (they have waited already), so under load the
batches grow by themselves and with one client each request runs at once after at
most ``max_wait_ms``.

``run_batch(jobs) -> results`` runs in one worker thread (the event loop keeps
accepting, validating and tokenising requests meanwhile) and returns one result
per job, in order. If it raises for a batch of several requests, each request is
run again alone, so one bad request fails only itself.

:meth:`DynamicBatcher.drain` stops the waiting (a stopping server answers what it
holds at once); :meth:`DynamicBatcher.close` also stops taking requests
(:class:`BatcherClosed`) and waits until every queued and running request has its
answer.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from auq.utils.validation import check_positive_int

__all__ = ["BatcherClosed", "BatcherStats", "DynamicBatcher", "QueueFull"]

J = TypeVar("J")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


class QueueFull(RuntimeError):
    """The queue already holds ``max_queue_rows`` rows."""


@dataclass
class BatcherStats:
    """Running totals of a :class:`DynamicBatcher` (read them with :meth:`as_dict`)."""

    requests: int = 0
    rows: int = 0
    tokens: int = 0
    batches: int = 0
    failed_requests: int = 0
    largest_batch_requests: int = 0
    largest_batch_rows: int = 0
    largest_batch_tokens: int = 0
    busy_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        mean = self.requests / self.batches if self.batches else 0.0
        return {
            "requests": self.requests,
            "rows": self.rows,
            "tokens": self.tokens,
            "batches": self.batches,
            "failed_requests": self.failed_requests,
            "mean_requests_per_batch": round(mean, 3),
            "largest_batch_requests": self.largest_batch_requests,
            "largest_batch_rows": self.largest_batch_rows,
            "largest_batch_tokens": self.largest_batch_tokens,
            "busy_seconds": round(self.busy_seconds, 3),
        }


@dataclass
class _Entry(Generic[J]):
    job: J
    n_rows: int
    n_tokens: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[J, R]):
    """Coalesce concurrent requests into batches run by one worker thread.

    Parameters
    ----------
    run_batch : callable
        ``run_batch(jobs: list) -> list`` with one result per job, in order; runs in
        the worker thread. It must not touch the event loop.
    max_batch_tokens : int
        Token budget of a batch (the sum of its requests' ``n_tokens``).
    max_wait_ms : float
        How long the oldest queued request may wait for company, in milliseconds.
    max_batch_requests : int, optional
        Requests per batch at most (1 turns batching off); None: no limit.
    max_queue_rows : int, optional
        Rows waiting at most; :meth:`submit` raises :class:`QueueFull` beyond it.

    Use it inside a running event loop: :meth:`start`, then :meth:`submit` from
    request handlers, then :meth:`close`.
    """

    def __init__(
        self,
        run_batch: Callable[[list[J]], Sequence[R]],
        *,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_batch_requests: int | None = None,
        max_queue_rows: int | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_tokens = check_positive_int("max_batch_tokens", max_batch_tokens)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int | float):
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        if not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_batch_requests = (
            None
            if max_batch_requests is None
            else check_positive_int("max_batch_requests", max_batch_requests)
        )
        self.max_queue_rows = (
            None if max_queue_rows is None else check_positive_int("max_queue_rows", max_queue_rows)
        )
        self.stats = BatcherStats()
        self._queue: collections.deque[_Entry[J]] = collections.deque()
        self._queued_rows = 0
        self._collecting: list[_Entry[J]] = []  # the batch waiting for company
        self._running_requests = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._draining = False

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop task and the worker thread (call inside the running loop)."""
        if self._task is not None:
            raise RuntimeError("the batcher has already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auq-serve-batch")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="auq-batcher")

    async def close(self) -> None:
        """Refuse new requests, answer every queued and running one, then stop."""
        self._closing = True
        if self._task is None:
            return
        self._wakeup.set()
        await self._task
        self._executor.shutdown(wait=True)

    def drain(self) -> None:
        """Stop waiting for company: run what is queued now (the server is stopping).

        New requests are still taken (those already read must be answered); only
        :meth:`close` refuses them.
        """
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def closing(self) -> bool:
        """Whether the batcher is draining or closed."""
        return self._closing or self._draining

    @property
    def queued_requests(self) -> int:
        """Requests waiting: in the queue or in the batch that waits for company."""
        return len(self._queue) + len(self._collecting)

    @property
    def queued_rows(self) -> int:
        """Rows of the waiting requests."""
        return self._queued_rows

    @property
    def running_requests(self) -> int:
        """Requests in the batch the worker thread is running now."""
        return self._running_requests

    # -- requests --------------------------------------------------------------------
    async def submit(self, job: J, *, n_rows: int, n_tokens: int) -> R:
        """Queue ``job`` and wait for its result (or the exception its batch raised).

        Raises
        ------
        BatcherClosed
            After :meth:`close` was called (or before :meth:`start`).
        QueueFull
            When the queue would pass ``max_queue_rows``.
        """
        if self._closing or self._task is None:
            raise BatcherClosed("the server is shutting down and takes no new requests")
        limit = self.max_queue_rows
        if limit is not None and self._queue and self._queued_rows + n_rows > limit:
            raise QueueFull(
                f"the queue holds {self._queued_rows} rows and the limit is {limit}; retry later"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(job, n_rows, n_tokens, future))
        self._queued_rows += n_rows
        self._wakeup.set()
        return await future

    # -- the loop --------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect()
            await self._run(batch)

    def _fits(self, batch: list[_Entry[J]], tokens: int, entry: _Entry[J]) -> bool:
        if self.max_batch_requests is not None and len(batch) >= self.max_batch_requests:
            return False
        return tokens + entry.n_tokens <= self.max_batch_tokens

    async def _collect(self) -> list[_Entry[J]]:
        """Take the oldest request and those that join it before the batch closes."""
        first = self._queue.popleft()
        batch, tokens = [first], first.n_tokens
        self._collecting = batch
        deadline = first.arrived + self.max_wait
        while True:
            while self._queue and self._fits(batch, tokens, self._queue[0]):
                entry = self._queue.popleft()
                batch.append(entry)
                tokens += entry.n_tokens
            full = self._queue or (
                self.max_batch_requests is not None and len(batch) >= self.max_batch_requests
            )
            remaining = deadline - time.monotonic()
            if full or remaining <= 0 or self._closing or self._draining:
                break
            self._wakeup.clear()
            try:  # wait for the next request or the deadline
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
        self._collecting = []
        self._queued_rows -= sum(e.n_rows for e in batch)
        return batch

    async def _run(self, batch: list[_Entry[J]]) -> None:
        loop = asyncio.get_running_loop()
        live = [e for e in batch if not e.future.done()]  # a client may have gone away
        if not live:
            return
        self._running_requests = len(live)
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_jobs, live)
        finally:
            self._running_requests = 0
            self.stats.busy_seconds += time.perf_counter() - start
        s = self.stats
        s.batches += 1
        s.largest_batch_requests = max(s.largest_batch_requests, len(live))
        s.largest_batch_rows = max(s.largest_batch_rows, sum(e.n_rows for e in live))
        s.largest_batch_tokens = max(s.largest_batch_tokens, sum(e.n_tokens for e in live))
        for entry, (ok, value) in zip(live, results, strict=True):
            s.requests += 1
            s.rows += entry.n_rows
            s.tokens += entry.n_tokens
            if not ok:
                s.failed_requests += 1
            if entry.future.done():  # cancelled while it ran
                continue
            if ok:
                entry.future.set_result(value)
            else:
                entry.future.set_exception(value)

    def _run_jobs(self, entries: list[_Entry[J]]) -> list[tuple[bool, Any]]:
        """In the worker thread: (ok, result or exception) per entry."""
        jobs = [e.job for e in entries]
        try:
            results = list(self.run_batch(jobs))
            if len(results) != len(jobs):
                raise RuntimeError(
                    f"run_batch returned {len(results)} results for {len(jobs)} requests"
                )
            return [(True, r) for r in results]
        except Exception as err:
            if len(jobs) == 1:
                return [(False, err)]
        out = []  # the batch failed: run each request alone, so a bad one fails only itself
        for job in jobs:
            try:
                (result,) = self.run_batch([job])
                out.append((True, result))
            except Exception as err:
                out.append((False, err))
        return out
