"""What both LiteLLM doors share: the engine handle, the decision summary, and recording from log events.

Integration modules import each other by absolute `echolm_middleware.integrations.*` names only:
LiteLLM loads `integrations/litellm_proxy.py` by file path next to config.yaml, where relative
imports would not resolve.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

# litellm fetches its cost map over the network on import unless told not to; air-gapped hosts have
# no network, and an explicit setting by the user still wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.integrations.custom_logger import CustomLogger

from echolm_middleware.core.engine import Engine
from echolm_middleware.core.types import Decision, Outcome, Prepared

logger = logging.getLogger("echolm")

# Where a request carries our summary between the pre-call hook and the log events. The hook always
# overwrites it, so a caller cannot plant one.
METADATA_KEY = "echolm"
BYPASS_KEY = "echolm_bypass"


def decision_summary(decision: Decision) -> dict[str, Any]:
    """The part of a decision the caller sees (response headers and metadata)."""
    return {
        "request_id": decision.request_id,
        "action": decision.action,
        "tier": decision.chosen_tier,
        "examples": len(decision.examples),
        "best_similarity": None if decision.best_similarity is None else round(decision.best_similarity, 4),
        "reason": decision.reason,
    }


def summary_without_decision(model: str, action: str, reason: str) -> dict[str, Any]:
    """The summary when no decision could be kept (the engine is not up yet)."""
    return {"request_id": "", "action": action, "tier": model, "examples": 0, "best_similarity": None, "reason": reason}


def response_headers(summary: Mapping[str, Any]) -> dict[str, str]:
    """HTTP headers that show the caller what we decided."""
    headers = {
        "x-echolm-request-id": str(summary["request_id"]),
        "x-echolm-action": str(summary["action"]),
        "x-echolm-tier": str(summary["tier"]),
        "x-echolm-examples": str(summary["examples"]),
    }
    if summary.get("overhead_ms") is not None:
        headers["x-echolm-overhead-ms"] = f"{summary['overhead_ms']:.2f}"
    if summary.get("best_similarity") is not None:
        headers["x-echolm-best-similarity"] = f"{summary['best_similarity']:.4f}"
    if summary["action"] != "route":
        # Header values must be latin-1: keep the reason plain.
        headers["x-echolm-reason"] = str(summary["reason"]).encode("ascii", "replace").decode()[:200]
    return headers


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
        logger.warning("echolm failed open (%s): %s", reason, exc if exc is not None else "")


def fail_open_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return type(exc).__name__


async def prepare_or_fail_open(
    handle: EngineHandle, counter: FailOpenCounter, timeout_s: float, request: Any
) -> tuple[Prepared | None, Engine | None]:
    """Run the engine within the time budget; on any failure, a fail-open decision (or None)."""
    engine: Engine | None = None
    try:
        engine = await handle.get(timeout_s)
        return await asyncio.wait_for(engine.aprepare(request), timeout_s), engine
    except Exception as exc:
        reason = fail_open_reason(exc) if engine is not None else f"engine not ready: {fail_open_reason(exc)}"
        counter.add(reason, exc)
        if engine is None:
            return None, None
        prepared = engine.fail_open(request, f"{reason}: {exc}"[:300])
        # Off the event loop and not awaited: a hung state database must not delay the request.
        asyncio.get_running_loop().run_in_executor(None, engine.keep_quietly, prepared.decision)
        return prepared, engine


def answer_of(response_obj: Any) -> tuple[str, str | None]:
    """Text and finish reason of a (complete, possibly stream-assembled) chat response."""
    try:
        choice = response_obj.choices[0]
        content = choice.message.content
        return (content if isinstance(content, str) else ""), choice.finish_reason
    except (AttributeError, IndexError, TypeError):
        return "", None


def summary_from_kwargs(kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or kwargs.get("metadata") or {}
    summary = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    return summary if isinstance(summary, Mapping) and "request_id" in summary else None


class RecordingCallback(CustomLogger):
    """Records outcomes from LiteLLM's log events (streamed responses arrive here once, assembled)."""

    def __init__(self, handle: EngineHandle, counter: FailOpenCounter) -> None:
        super().__init__()
        self.handle = handle
        self.fail_open = counter

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is None or engine is None:
            return
        engine.load.finish(str(summary["request_id"]))
        answer, finish_reason = answer_of(response_obj)
        try:
            latency = (end_time - start_time).total_seconds()
        except (AttributeError, TypeError):
            latency = None
        outcome = Outcome(
            request_id=str(summary["request_id"]),
            served_by=str(summary["tier"]),
            answer=answer,
            finish_reason=finish_reason,
            latency_s=latency,
        )
        try:
            await engine.arecord(outcome)
        except Exception as exc:  # recording is ours; the caller already has the answer
            self.fail_open.add(f"record: {fail_open_reason(exc)}", exc)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is not None and engine is not None:
            engine.load.finish(str(summary["request_id"]))
