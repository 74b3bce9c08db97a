"""How every door reaches the engine: built once in the background, bounded in time, failing open.

Framework-free, so the LiteLLM doors and the LangChain door share one copy of these rules. A door
prepares through here, then calls `record` (or `release`: its tier failed, the call was cancelled, the
client hung up); the engine does the load accounting between the two.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from echolm_middleware.core.engine import Engine
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.core.types import ChatRequest, Outcome, Prepared
from echolm_middleware.doors.bounded_threads import PREPARE, WRITES, Saturated
from echolm_middleware.doors.tier_faults import tier_at_fault
from echolm_middleware.metrics import (
    metrics,
    observe_decision,
    observe_threshold_arm,
    observe_tier_left_out,
    quietly,
)

logger = logging.getLogger("echolm")

# The metadata key an in-process caller (Router, LangChain) uses to say whom a request serves.
TENANT_KEY = "echolm_tenant"


def summary_of(request: ChatRequest, prepared: Prepared | None) -> DecisionSummary:
    """The caller's view of a request's decision, also when the engine could not decide (not built yet)."""
    if prepared is None:
        return DecisionSummary.without_decision(request.model, "fail_open", "engine not ready", tenant=request.tenant)
    return DecisionSummary.of(prepared.decision)


class EngineHandle:
    """Builds the engine once, in a background thread, so the first requests fail open instead of waiting."""

    def __init__(self, build: Callable[[], Engine]) -> None:
        self._build = build
        self._future: Future[Engine] | None = None
        self._lock = threading.Lock()
        self.failed_builds = 0  # a build that failed is retried on a later request

    def start(self) -> Future[Engine]:
        with self._lock:
            if self._future is None or (self._future.done() and self._future.exception() is not None):
                # A failed build (say, Chroma's server was down) is retried on a later request.
                future: Future[Engine] = Future()
                # Running from the start: a caller that stops waiting (asyncio cancels the future it
                # waited on, and with it this one) must not cancel the build for everyone after it.
                future.set_running_or_notify_cancel()
                self._future = future
                threading.Thread(target=self._run, args=(future,), name="echolm-engine-build", daemon=True).start()
            return self._future

    def _run(self, future: Future[Engine]) -> None:
        try:
            future.set_result(self._build())
        except BaseException as exc:
            logger.error("echolm: building the engine failed: %s", exc)
            self.failed_builds += 1
            future.set_exception(exc)

    async def get(self, timeout: float) -> Engine:
        """The engine, waiting at most `timeout` seconds (raises TimeoutError or the build's error)."""
        return await asyncio.wait_for(asyncio.wrap_future(self.start()), timeout)

    def get_sync(self, timeout: float) -> Engine:
        return self.start().result(timeout=timeout)

    def ready(self) -> Engine | None:
        future = self.start()
        return future.result() if future.done() and future.exception() is None else None


class FailOpenCounter:
    """Counts decisions that failed open, by reason, and logs each one."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, reason: str, exc: BaseException | None = None) -> None:
        with self._lock:
            self.counts[reason] += 1
        quietly(lambda: metrics().fail_open.labels(reason=reason).inc())
        logger.warning("echolm failed open (%s): %s", reason, exc if exc is not None else "")


def fail_open_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, Saturated):
        return "saturated"
    return type(exc).__name__


def _failed_open(
    counter: FailOpenCounter, engine: Engine | None, request: ChatRequest, exc: Exception
) -> tuple[Prepared | None, Engine | None]:
    reason = fail_open_reason(exc) if engine is not None else f"engine not ready: {fail_open_reason(exc)}"
    counter.add(reason, exc)
    if engine is None:
        return None, None
    return engine.fail_open(request, f"{reason}: {exc}"[:300]), engine


def _release_if_decided(engine: Engine, future: Future[Prepared]) -> None:
    """A decision that arrived after its door gave up on it (timeout, cancellation) must not hold load."""
    if future.cancelled() or future.exception() is not None:
        return
    try:
        engine.release(future.result().decision.request_id)
    except Exception as exc:
        logger.warning("echolm: a late decision's load was not released: %s", exc)


def _submit_prepare(engine: Engine, request: ChatRequest) -> Future[Prepared]:
    # On threads of our own, so that a caller can stop waiting at its time budget (a hung store cannot
    # hold it) while the decision, if it still comes, is released rather than left as load.
    return PREPARE.submit(engine.prepare, request)


def _keep_in_background(engine: Engine, prepared: Prepared, counter: FailOpenCounter) -> None:
    """Keep a failed-open decision for `explain`, off the caller's path: a hung state database (perhaps
    the very reason it failed open) must not delay the request."""
    try:
        WRITES.submit(engine.keep_quietly, prepared.decision)
    except Saturated as exc:
        counter.add("keep: saturated", exc)


def _give_up_on(engine: Engine, future: Future[Prepared]) -> None:
    # Runs in the preparing thread once it ends (or at once if it has), whatever became of the caller's loop.
    future.add_done_callback(lambda done: _release_if_decided(engine, done))


async def _prepare_within(engine: Engine, request: ChatRequest, timeout_s: float) -> Prepared:
    future = _submit_prepare(engine, request)
    try:
        # Shielded: the thread runs on after a timeout, and its late decision is then released, not lost.
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)
    except BaseException:
        _give_up_on(engine, future)
        raise


async def prepare_or_fail_open(
    handle: EngineHandle, counter: FailOpenCounter, timeout_s: float, request: ChatRequest
) -> tuple[Prepared | None, Engine | None]:
    """Run the engine within the time budget; on any failure, a fail-open decision (or None)."""
    engine: Engine | None = None
    prepared: Prepared | None
    try:
        engine = await handle.get(timeout_s)
        prepared = await _prepare_within(engine, request, timeout_s)
    except Exception as exc:
        prepared, engine = _failed_open(counter, engine, request, exc)
        if prepared is not None and engine is not None:
            _keep_in_background(engine, prepared, counter)
    _observe(request, prepared)
    return prepared, engine


def prepare_or_fail_open_sync(
    handle: EngineHandle, counter: FailOpenCounter, timeout_s: float, request: ChatRequest
) -> tuple[Prepared | None, Engine | None]:
    """The same as `prepare_or_fail_open` for callers without an event loop."""
    engine: Engine | None = None
    prepared: Prepared | None
    try:
        engine = handle.get_sync(timeout_s)
        future = _submit_prepare(engine, request)
        try:
            prepared = future.result(timeout=timeout_s)
        except BaseException:
            _give_up_on(engine, future)
            raise
    except Exception as exc:
        prepared, engine = _failed_open(counter, engine, request, exc)
        if prepared is not None and engine is not None:
            _keep_in_background(engine, prepared, counter)
    _observe(request, prepared)
    return prepared, engine


def _observe(request: ChatRequest, prepared: Prepared | None) -> None:
    """Every door's prepared request is counted here once: its decision, and its arm where it was explored."""
    observe_decision(summary_of(request, prepared))
    if prepared is not None:
        observe_threshold_arm(prepared.decision.threshold_arm)


def record_or_count(engine: Engine, outcome: Outcome, counter: FailOpenCounter) -> None:
    """Record an outcome; a failure is counted and logged, never raised (the caller has its answer)."""
    try:
        engine.record(outcome)
    except Exception as exc:
        counter.add(f"record: {fail_open_reason(exc)}", exc)


async def arecord_or_count(engine: Engine, outcome: Outcome, counter: FailOpenCounter) -> None:
    """`record_or_count` on our own write threads, off the event loop (dropped and counted when they are full)."""
    try:
        await WRITES.run(record_or_count, engine, outcome, counter)
    except Saturated as exc:
        counter.add("record: saturated", exc)


def _submit_record(engine: Engine, outcome: Outcome, counter: FailOpenCounter) -> Future[None] | None:
    """The record on our write threads; None (dropped and counted) when they are full."""
    try:
        return WRITES.submit(record_or_count, engine, outcome, counter)
    except Saturated as exc:
        counter.add("record: saturated", exc)
        return None


def record_within(engine: Engine, outcome: Outcome, counter: FailOpenCounter, timeout_s: float) -> None:
    """Record on our write threads, waiting at most `timeout_s` for it: for a door whose caller gets its
    answer only once the record is done (the LangChain door, so that the next call finds the example), a
    hung store then holds the caller no longer than its budget; the record goes on in the background."""
    future = _submit_record(engine, outcome, counter)
    try:
        if future is not None:
            future.result(timeout=timeout_s)
    except TimeoutError as exc:
        counter.add("record: timeout (left running)", exc)


async def arecord_within(engine: Engine, outcome: Outcome, counter: FailOpenCounter, timeout_s: float) -> None:
    """`record_within` for callers on an event loop."""
    future = _submit_record(engine, outcome, counter)
    try:
        if future is not None:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)
    except TimeoutError as exc:
        counter.add("record: timeout (left running)", exc)


def release_or_count(engine: Engine, request_id: str, counter: FailOpenCounter) -> None:
    """End a request's load without an outcome (its tier failed, it was cancelled, the client hung up).

    In the background on our write threads, not awaited: with Redis coordination the end is a network call,
    and it must not run on an event loop or hold a hang-up's cleanup. If those threads are full, the load
    stops counting after `routing.load_stale_after_s`.
    """

    def release() -> None:
        try:
            engine.release(request_id)
        except Exception as exc:
            counter.add(f"release: {fail_open_reason(exc)}", exc)

    try:
        WRITES.submit(release)
    except Saturated as exc:
        counter.add("release: saturated", exc)


def note_tier_failure(engine: Engine, tier: str, exc: BaseException | None, counter: FailOpenCounter) -> None:
    """The call the engine sent to `tier` failed: where the error says the tier is at fault, the router
    leaves it out for a while (`core.tier_health`). Never raises into the request."""
    try:
        if tier_at_fault(exc) and engine.tier_failed(tier):
            observe_tier_left_out(tier)
    except Exception as error:
        counter.add(f"tier health: {fail_open_reason(error)}", error)
