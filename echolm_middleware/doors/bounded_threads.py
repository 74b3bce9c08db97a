"""Thread pools of our own, each with a bounded queue, so that our parts can never stall a request.

A hung SQLite file, a stopped embedded Chroma or a Redis that does not answer holds the thread that
calls it. On Python's default executor (what `asyncio.to_thread` uses, shared with LiteLLM and the
application) the work behind such a thread queues without limit, and so does everyone else's. Each
pool here has threads of its own and holds at most `threads + queued` tasks; past that, `submit`
raises `Saturated` at once and the door fails open: the request goes out as asked, and a record or a
kept decision is dropped and counted (`echolm_fail_open_total`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Saturated(RuntimeError):
    """Every thread of a pool is busy and its queue is full: the caller fails open instead of waiting."""


class BoundedThreads:
    def __init__(self, name: str, threads: int, queued: int) -> None:
        self.name = name
        self.capacity = threads + queued
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"echolm-{name}")
        self._lock = threading.Lock()
        self._in_use = 0

    def in_use(self) -> int:
        """Tasks running or queued now."""
        return self._in_use

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn` on this pool; raises `Saturated` when `capacity` tasks are already running or queued."""
        with self._lock:
            if self._in_use >= self.capacity:
                raise Saturated(f"echolm's {self.name} threads are all busy and their queue is full")
            self._in_use += 1
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except RuntimeError as exc:  # the interpreter is shutting down: nothing runs any more
            self._done()
            raise Saturated(f"echolm's {self.name} threads are shut down") from exc
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _: self._done())  # also when it is cancelled before running
        return future

    def _done(self) -> None:
        with self._lock:
            self._in_use -= 1

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`submit`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))


# Deciding a request: each door waits at most its time budget for a decision, so a hung store holds
# at most these threads; requests past the queue fail open at once instead of queueing behind them.
PREPARE = BoundedThreads("prepare", threads=8, queued=56)
# What happens after the answer was sent: records (admission included), releases of load, the decisions
# of requests that failed open. Nobody waits on them; past the queue they are dropped and counted.
WRITES = BoundedThreads("writes", threads=4, queued=1024)
# The metrics scrape reads the store's size: a hung store must not pile up scrapes either.
SCRAPES = BoundedThreads("scrapes", threads=1, queued=4)
