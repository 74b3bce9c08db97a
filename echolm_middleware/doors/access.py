"""How every door reaches the engine: built once in the background, bounded in time, failing open.

Framework-free, so the LiteLLM doors and the LangChain door share one copy of these rules. Integration
modules import each other by absolute `echolm_middleware.doors.*` names only: LiteLLM loads
`integrations/litellm_proxy.py` by file path next to config.yaml, where relative imports would not resolve.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from echolm_middleware.core.engine import Engine
from echolm_middleware.core.types import ChatRequest, Decision, Outcome, Prepared
from echolm_middleware.metrics import metrics, observe_decision, quietly

logger = logging.getLogger("echolm")

# The metadata key an in-process caller (Router, LangChain) uses to say whom a request serves.
TENANT_KEY = "echolm_tenant"

# Synchronous callers wait on these threads so that a hung store cannot hold them past the budget.
_PREPARE_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="echolm-prepare")


def decision_summary(decision: Decision) -> dict[str, Any]:
    """The part of a decision the caller sees (response headers and metadata)."""
    return {
        "request_id": decision.request_id,
        "action": decision.action,
        "tier": decision.chosen_tier,
        "examples": len(decision.examples),
        "example_tokens": decision.example_tokens,
        "best_similarity": None if decision.best_similarity is None else round(decision.best_similarity, 4),
        "reason": decision.reason,
        "tenant": decision.tenant,  # for our metrics; never sent back to the caller (see `caller_view`)
    }


def caller_view(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary as the caller may see it in a response body: the tenant label stays with us."""
    return {key: value for key, value in summary.items() if key != "tenant"}


def observe(request: ChatRequest, prepared: Prepared | None) -> None:
    """The decision's metrics: every door's requests pass here once."""
    if prepared is None:
        observe_decision(request.tenant, summary_without_decision(request.model, "fail_open", "engine not ready"))
        return
    observe_decision(request.tenant, decision_summary(prepared.decision))


def chosen_tier_failed(summary: Mapping[str, Any], served_by: str) -> dict[str, Any]:
    """The summary once the tier we chose failed and `served_by`, the model the caller named, answered."""
    return {**summary, "action": "fail_open", "tier": served_by, "reason": f"chosen tier {summary.get('tier')} failed"}


def summary_without_decision(model: str, action: str, reason: str) -> dict[str, Any]:
    """The summary when no decision could be kept (the engine is not up yet)."""
    return {
        "request_id": "",
        "action": action,
        "tier": model,
        "examples": 0,
        "example_tokens": 0,
        "best_similarity": None,
        "reason": reason,
    }


class EngineHandle:
    """Builds the engine once, in a background thread, so the first requests fail open instead of waiting."""

    def __init__(self, build: Callable[[], Engine]) -> None:
        self._build = build
        self._future: Future[Engine] | None = None
        self._lock = threading.Lock()

    def start(self) -> Future[Engine]:
        with self._lock:
            if self._future is None or (self._future.done() and self._future.exception() is not None):
                # A failed build (say, Chroma's server was down) is retried on a later request.
                future: Future[Engine] = Future()
                self._future = future
                threading.Thread(target=self._run, args=(future,), name="echolm-engine-build", daemon=True).start()
            return self._future

    def _run(self, future: Future[Engine]) -> None:
        try:
            future.set_result(self._build())
        except BaseException as exc:
            logger.error("echolm: building the engine failed: %s", exc)
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
    return type(exc).__name__


def _failed_open(
    counter: FailOpenCounter, engine: Engine | None, request: ChatRequest, exc: Exception
) -> tuple[Prepared | None, Engine | None]:
    reason = fail_open_reason(exc) if engine is not None else f"engine not ready: {fail_open_reason(exc)}"
    counter.add(reason, exc)
    if engine is None:
        return None, None
    return engine.fail_open(request, f"{reason}: {exc}"[:300]), engine


async def prepare_or_fail_open(
    handle: EngineHandle, counter: FailOpenCounter, timeout_s: float, request: ChatRequest
) -> tuple[Prepared | None, Engine | None]:
    """Run the engine within the time budget; on any failure, a fail-open decision (or None)."""
    engine: Engine | None = None
    prepared: Prepared | None
    try:
        engine = await handle.get(timeout_s)
        prepared = await asyncio.wait_for(engine.aprepare(request), timeout_s)
    except Exception as exc:
        prepared, engine = _failed_open(counter, engine, request, exc)
        if prepared is not None and engine is not None:
            # Off the event loop and not awaited: a hung state database must not delay the request.
            asyncio.get_running_loop().run_in_executor(None, engine.keep_quietly, prepared.decision)
    observe(request, prepared)
    return prepared, engine


def prepare_or_fail_open_sync(
    handle: EngineHandle, counter: FailOpenCounter, timeout_s: float, request: ChatRequest
) -> tuple[Prepared | None, Engine | None]:
    """The same as `prepare_or_fail_open` for callers without an event loop."""
    engine: Engine | None = None
    prepared: Prepared | None
    try:
        engine = handle.get_sync(timeout_s)
        prepared = _PREPARE_THREADS.submit(engine.prepare, request).result(timeout=timeout_s)
    except Exception as exc:
        prepared, engine = _failed_open(counter, engine, request, exc)
        if prepared is not None and engine is not None:
            _PREPARE_THREADS.submit(engine.keep_quietly, prepared.decision)
    observe(request, prepared)
    return prepared, engine


def record_or_count(engine: Engine, outcome: Outcome, counter: FailOpenCounter) -> None:
    """Record an outcome; a failure is counted and logged, never raised (the caller has its answer)."""
    try:
        engine.record(outcome)
    except Exception as exc:
        counter.add(f"record: {fail_open_reason(exc)}", exc)


async def arecord_or_count(engine: Engine, outcome: Outcome, counter: FailOpenCounter) -> None:
    """`record_or_count` off the event loop."""
    try:
        await engine.arecord(outcome)
    except Exception as exc:
        counter.add(f"record: {fail_open_reason(exc)}", exc)
