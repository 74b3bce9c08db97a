"""Load for `echolm bench`: closed loop (N clients, each sends its next request when one ends) and open
loop (Poisson arrivals at a given rate, latency counted from the arrival, queueing included)."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NoReturn

from tqdm import tqdm

from echolm_lab.bench.systems import Answered, System
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord

# Open-loop senders: enough threads that arrivals are never held back by the client itself.
_OPEN_LOOP_THREADS = 64


@dataclass(frozen=True)
class LoadPass:
    """A system's answers to a request set, index-aligned with it, and how long the pass took."""

    system: str
    load: str
    answers: list[Answered]
    wall_s: float
    rate_rps: float | None = None  # the Poisson arrival rate of an open-loop pass
    # Open loop: when each request arrived (seconds into the pass), and how long the start counts as
    # warm-up: queues build from empty, so the first minute's latencies flatter any rate.
    arrivals_s: list[float] | None = None
    warmup_s: float = 0.0
    # Closed loop: how many clients, and when each request finished (seconds into the pass).
    clients: int | None = None
    finished_s: list[float] | None = None
    # How the system's proxy ended if it ended mid-pass ("killed by SIGSEGV"): its errors are then that.
    proxy_ended: str | None = None
    notes: list[str] = field(default_factory=list)  # what else the report should say about the pass

    @property
    def throughput_rps(self) -> float:
        done = sum(1 for a in self.answers if a.error is None)
        return done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def saturated_rps(self) -> float:
        """A closed loop's rate while every client had a request in flight: the completions up to the one
        that sent the last request, over their time. After it the loop drains, fewer requests than servers
        remain and some servers idle, which `throughput_rps` counts against the servers. A pass with no such
        window (no more requests than clients, or an open loop) gives `throughput_rps`."""
        if self.clients is None or self.finished_s is None or len(self.finished_s) <= self.clients:
            return self.throughput_rps
        # The last request is sent when the (n - clients)-th finishes; requests finishing at that same time
        # (servers started together finish together) were served in the window too.
        until = sorted(self.finished_s)[len(self.finished_s) - self.clients - 1]
        served = sum(1 for at in self.finished_s if at <= until)
        return served / until if until > 0 else self.throughput_rps

    def steady(self) -> list[Answered]:
        """The answers latency is read from: past the warm-up (every answer of a closed loop)."""
        if self.arrivals_s is None or self.warmup_s <= 0:
            return list(self.answers)
        return [a for a, at in zip(self.answers, self.arrivals_s, strict=True) if at >= self.warmup_s]


def closed_loop(system: System, workload: Workload, items: Sequence[QARecord], *, clients: int, label: str) -> LoadPass:
    """`clients` concurrent clients work through the items in order."""
    results: list[Answered | None] = [None] * len(items)
    finished = [0.0] * len(items)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool, _bar(len(items), label) as bar:

        def one(index: int) -> None:
            results[index] = system.answer(workload.messages(items[index]), workload.max_tokens)
            finished[index] = time.perf_counter() - started
            bar.update(1)

        list(pool.map(one, range(len(items))))
    return LoadPass(
        system.name,
        f"closed loop, {clients} clients",
        _complete(results),
        time.perf_counter() - started,
        clients=clients,
        finished_s=finished,
    )


def open_loop(
    system: System,
    workload: Workload,
    items: Sequence[QARecord],
    *,
    rate_rps: float,
    seed: int,
    label: str,
    warmup_s: float = 0.0,
    after_answer: Callable[[QARecord, Answered], None] | None = None,
) -> LoadPass:
    """Poisson arrivals at `rate_rps`; each request's latency runs from its arrival, so queueing shows.
    Requests that arrive in the first `warmup_s` are served but not counted in the latency figures.
    `after_answer` sees each request with its answer once it is timed (a user's feedback, say)."""
    rng = random.Random(seed)
    arrivals, clock = [], 0.0
    for _ in items:
        clock += rng.expovariate(rate_rps)
        arrivals.append(clock)
    results: list[Answered | None] = [None] * len(items)
    lock = threading.Lock()
    started = time.perf_counter()
    with ThreadPoolExecutor(_OPEN_LOOP_THREADS) as pool, _bar(len(items), label) as bar:

        def one(index: int) -> None:
            arrived = started + arrivals[index]
            served = system.answer(workload.messages(items[index]), workload.max_tokens)
            queued = max(0.0, time.perf_counter() - arrived - served.latency_s)
            with lock:
                results[index] = _with_queueing(served, queued)
                bar.update(1)
            if after_answer is not None:
                after_answer(items[index], served)

        futures = []
        for index, offset in enumerate(arrivals):
            time.sleep(max(0.0, started + offset - time.perf_counter()))
            futures.append(pool.submit(one, index))
        for future in futures:
            future.result()
    wall_s = time.perf_counter() - started
    return LoadPass(
        system.name, f"Poisson, {rate_rps:g} req/s", _complete(results), wall_s, rate_rps, arrivals, warmup_s
    )


def _with_queueing(served: Answered, queued_s: float) -> Answered:
    ttft = None if served.ttft_s is None else served.ttft_s + queued_s
    return replace(served, latency_s=served.latency_s + queued_s, ttft_s=ttft)


def _complete(results: list[Answered | None]) -> list[Answered]:
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:
        raise RuntimeError(f"requests {missing[:5]} got no result")
    return [result for result in results if result is not None]


def _bar(total: int, label: str) -> tqdm[NoReturn]:
    return tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=False)
