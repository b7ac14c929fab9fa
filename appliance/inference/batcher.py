"""Micro-batching: concurrent requests share one forward pass.

A request's positions wait at most `window_s` for others to join, up to `max_batch` positions a
pass; passes run one at a time on a worker thread so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], list[Out]],
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.run = run
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut: asyncio.Future[Out] = loop.create_future()
            self.queue.put_nowait((item, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
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
