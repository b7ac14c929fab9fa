"""Micro-batching: concurrent requests share one forward pass, and passes overlap the event loop.

Passes run one at a time on one worker thread (set up by `init_worker`, e.g. its torch thread
count), so the event loop keeps accepting and preparing requests while the model runs; the
thread takes each pass from a queue and answers all its requests in one callback on the loop (a
thread wake and a loop wake, no executor future chained to the loop). A pass takes the requests
queued when the worker is free, up to `max_batch` positions and at most half of the requests
recently in flight at once (the largest number outstanding over the last `RECENT_PASSES`
passes): with N clients each waiting for its answer, two groups of about N/2 alternate, one in
the forward pass while the loop reads and prepares the other, instead of all N waiting for one
pass and then for the loop. The wait for more is adaptive: a request that comes alone runs at
once; otherwise a pass waits at most `window_s` to reach that size.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

RECENT_PASSES = 8


class Entry(NamedTuple, Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    request: int  # positions of one submit share it


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], list[Out]],
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int], None] = lambda n: None,
        init_worker: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.init_worker = init_worker
        self.pending: deque[Entry[In, Out]] = deque()
        self.arrived = asyncio.Event()
        self.requests = 0  # submits so far: the next request's number
        self.in_flight = 0  # requests submitted and not answered
        self.peak = 0  # the most in flight at once since the last pass began
        self.peaks: deque[int] = deque([1], maxlen=RECENT_PASSES)
        # Passes for the worker (None: stop), each with the future its answers resolve.
        self.jobs: queue.SimpleQueue[tuple[list[Entry[In, Out]], asyncio.Future[None]] | None]
        self.jobs = queue.SimpleQueue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._work, args=(loop,), name="forward", daemon=True).start()
        self.task = loop.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.jobs.put(None)  # the worker ends after the pass it may be running

    async def submit(self, items: Sequence[In]) -> list[Out]:
        loop = asyncio.get_running_loop()
        request = self.requests
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        futures = []
        for item in items:
            fut: asyncio.Future[Out] = loop.create_future()
            self.pending.append(Entry(item, fut, request))
            futures.append(fut)
        self.arrived.set()
        try:
            if len(futures) == 1:
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        finally:
            self.in_flight -= 1

    def _take(self, batch: list[Entry[In, Out]], requests: set[int], limit: int) -> None:
        """Move queued entries into `batch` while it has room: `max_batch` positions, and no
        request beyond the `limit`-th (a request's positions stay together)."""
        while self.pending and len(batch) < self.max_batch:
            head = self.pending[0]
            if head.request not in requests and len(requests) >= limit:
                return
            requests.add(head.request)
            batch.append(self.pending.popleft())

    async def _collect(self) -> list[Entry[In, Out]]:
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        self.peaks.append(self.peak)
        self.peak = self.in_flight
        limit = max(1, (max(self.peaks) + 1) // 2)
        batch: list[Entry[In, Out]] = []
        requests: set[int] = set()
        self._take(batch, requests, limit)
        if len(requests) < limit and len(batch) < self.max_batch and self.window_s > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.window_s
            while len(requests) < limit and len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except TimeoutError:
                    break
                self._take(batch, requests, limit)
        return [e for e in batch if not e.future.cancelled()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.on_batch(len(batch))
            answered = loop.create_future()
            self.jobs.put((batch, answered))
            await answered

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """The worker thread: each pass, then its answers (or its error) back to the loop."""
        broken: Exception | None = None
        if self.init_worker is not None:
            try:
                self.init_worker()
            except Exception as exc:  # every pass fails with it: no request waits forever
                broken = exc
        while (job := self.jobs.get()) is not None:
            batch, answered = job
            results: list[Out] = []
            error: Exception | None = broken
            if error is None:
                try:
                    results = self.run([e.item for e in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a pass of {len(batch)} gave {len(results)} answers")
                except Exception as exc:  # the callers get the error; the loop keeps serving
                    error = exc
            try:
                loop.call_soon_threadsafe(self._deliver, batch, results, error, answered)
            except RuntimeError:  # the loop has closed: nobody waits any more
                return

    @staticmethod
    def _deliver(batch: list[Entry[In, Out]], results: list[Out], error: Exception | None,
                 answered: asyncio.Future[None]) -> None:
        for i, e in enumerate(batch):
            if e.future.done():
                continue
            if error is None:
                e.future.set_result(results[i])
            else:
                e.future.set_exception(error)
        if not answered.done():
            answered.set_result(None)
