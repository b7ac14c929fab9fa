"""Micro-batching: concurrent requests share one forward pass.

Passes run one at a time on one worker thread (set up by `init_worker`, e.g. its torch thread
count), so the event loop keeps accepting requests while the model runs. Whatever queued during a
pass joins the next one. The wait for more is adaptive: a request that comes alone (the recent
passes held one position each) runs at once; under load a pass waits at most `window_s`, and
only until it is as large as the largest of the last `RECENT_PASSES` passes (the concurrency
seen lately), up to `max_batch` positions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

RECENT_PASSES = 8


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
        self.recent: deque[int] = deque([1], maxlen=RECENT_PASSES)  # positions per pass
        self.queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue()
        self.executor: ThreadPoolExecutor | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="forward",
                                           initializer=self.init_worker)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut: asyncio.Future[Out] = loop.create_future()
            self.queue.put_nowait((item, fut))
            futures.append(fut)
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await self.queue.get()]
        while len(batch) < self.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        target = min(self.max_batch, max(self.recent))
        if len(batch) < target and self.window_s > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.window_s
            while len(batch) < target:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
                while len(batch) < self.max_batch and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
        self.recent.append(len(batch))
        return [(item, fut) for item, fut in batch if not fut.cancelled()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run,
                                                     [item for item, _ in batch])
            except Exception as exc:  # the callers get the error; the loop keeps serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
