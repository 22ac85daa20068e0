"""Clients side by side on CPU threads, each with one intra-op thread.

Why: at FL's small batches (B=10) torch's intra-op parallelism barely pays: on this 2-core CPU
one cnn_mnist client trains about as fast on two intra-op threads as on one, and when other
processes share the cores, OpenMP's spinning threads make it several times slower. Training
(or evaluating) independent pieces of work on separate Python threads instead keeps every
core busy: torch releases the GIL inside its kernels, and autograd runs CPU backward passes
on the calling thread.

It also makes results independent of the worker count: every piece of work always runs with
one intra-op thread, so ``threads=1`` and ``threads=2`` give bitwise the same numbers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# One pool per size, kept for the process: its threads keep their thread-local modules (no
# model rebuilt per round) and their one-intra-op-thread setting, taken when they start.
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="afd-worker")
        return _POOLS[workers]


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    """torch ops on one intra-op thread inside (threads started inside inherit it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_ordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    on_done: Callable[[], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads, one intra-op thread each, in order.

    ``on_done`` is called on the calling thread once per finished item, in item order.
    """
    results: list[R] = []
    with single_threaded_ops():
        if workers <= 1:
            for item in items:
                results.append(fn(item))
                if on_done:
                    on_done()
            return results
        # threads start on first use, inside single_threaded_ops: one intra-op thread each
        for result in _pool(workers).map(fn, items):
            results.append(result)
            if on_done:
                on_done()
    return results
