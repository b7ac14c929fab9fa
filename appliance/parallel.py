"""Ordered work over spawned worker processes: the one pool pattern of the game generator and
the arena (each item an index, results in index order, the pool torn down on any error)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def spawn_imap(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...],
               fn: Callable[[int], T], count: int) -> Iterator[T]:
    """fn(0) .. fn(count - 1) in `workers` processes, yielded in order."""
    # spawn: the parent may hold threads (torch, tqdm, engine I/O) that fork would copy
    # half-locked.
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=initializer,
                                                     initargs=initargs)
    try:
        yield from pool.imap(fn, range(count), chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
