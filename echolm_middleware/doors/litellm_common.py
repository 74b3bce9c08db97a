"""What both LiteLLM doors share: the decision summary as headers, and recording from log events.

Integration modules import each other by absolute `echolm_middleware.doors.*` names only:
LiteLLM loads `integrations/litellm_proxy.py` by file path next to config.yaml, where relative
imports would not resolve.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

# litellm fetches its cost map over the network on import unless told not to; air-gapped hosts have
# no network, and an explicit setting by the user still wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.integrations.custom_logger import CustomLogger

from echolm_middleware.core.types import Outcome
from echolm_middleware.doors.access import (
    EngineHandle,
    FailOpenCounter,
    arecord_or_count,
    chosen_tier_failed,
)
from echolm_middleware.metrics import observe_saving

# Where a request carries our summary between the pre-call hook and the log events. The hook always
# overwrites it, so a caller cannot plant one.
METADATA_KEY = "echolm"
BYPASS_KEY = "echolm_bypass"


def header_value(value: object, limit: int = 200) -> str:
    """A value HTTP allows in a header: printable ASCII only. Reasons and model names can carry what the
    caller sent (a role of "\x11", a model name with a newline), which would make the server drop the
    connection instead of answering."""
    text = str(value)
    return "".join(char if " " <= char <= "~" else "?" for char in text[:limit]).strip()


def response_headers(summary: Mapping[str, Any]) -> dict[str, str]:
    """HTTP headers that show the caller what we decided."""
    headers = {
        "x-echolm-request-id": header_value(summary["request_id"]),
        "x-echolm-action": header_value(summary["action"]),
        "x-echolm-tier": header_value(summary["tier"]),
        "x-echolm-examples": header_value(summary["examples"]),
        "x-echolm-example-tokens": header_value(summary.get("example_tokens", 0)),
    }
    if summary.get("overhead_ms") is not None:
        headers["x-echolm-overhead-ms"] = f"{summary['overhead_ms']:.2f}"
    if summary.get("best_similarity") is not None:
        headers["x-echolm-best-similarity"] = f"{summary['best_similarity']:.4f}"
    if summary["action"] != "route":
        headers["x-echolm-reason"] = header_value(summary["reason"])
    return headers


def fall_back_to_requested(data: dict[str, Any], chosen: str, requested: str, requested_messages: list[Any]) -> None:
    """If the tier we chose fails before it answers (its server down, an error, a stream that dies before
    its first token), LiteLLM's router sends the request as the caller sent it to the model it named.

    A per-request `fallbacks` entry keyed by the chosen group, ahead of any the caller sent: the router
    takes the first entry naming the failed group. Once a stream has sent text, LiteLLM offers no
    fallback (it cannot take back what the caller has read), so such a stream ends in an error.
    """
    ours = {chosen: [{"model": requested, "messages": requested_messages}]}
    theirs = data.get("fallbacks")
    data["fallbacks"] = [ours, *theirs] if isinstance(theirs, list) else [ours]


def served_group(kwargs: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The model group that answered: the router's fallback may have replaced the tier we chose.

    Only after a fallback does the call's `model_group` name who answered: through the Router door it
    is the group the caller asked for, while our strategy picked a deployment of another tier.
    """
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or kwargs.get("metadata") or {}
    if isinstance(metadata, Mapping) and metadata.get("attempted_fallbacks"):
        group = metadata.get("model_group")
        if isinstance(group, str) and group:
            return group
    return str(summary["tier"])


def as_served(summary: Mapping[str, Any], response: Any) -> Mapping[str, Any]:
    """The summary as the caller should read it once the response exists: if the tier we chose failed
    and the router's fallback answered, the headers name the model that answered, as failing open."""
    extra = (getattr(response, "_hidden_params", None) or {}).get("additional_headers") or {}
    served = extra.get("x-litellm-model-group")
    if summary.get("action") != "route" or not extra.get("x-litellm-attempted-fallbacks") or not served:
        return summary
    return chosen_tier_failed(summary, served)


def answer_of(response_obj: Any) -> tuple[str, str | None]:
    """Text and finish reason of a (complete, possibly stream-assembled) chat response."""
    try:
        choice = response_obj.choices[0]
        content = choice.message.content
        return (content if isinstance(content, str) else ""), choice.finish_reason
    except (AttributeError, IndexError, TypeError):
        return "", None


def tokens_of(response_obj: Any) -> int:
    """Prompt and completion tokens of a response, 0 when it reports no usage."""
    try:
        return int(response_obj.usage.total_tokens or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


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
        # LiteLLM registers one callback per class and set of plain public fields, and drops the rest:
        # without a field of its own, a second door in one process (another Router, another engine)
        # would never be called, and its answers never recorded.
        self.instance = uuid.uuid4().hex

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is None or engine is None:
            return
        engine.load.finish(str(summary["request_id"]))
        served_by = served_group(kwargs, summary)
        if served_by != summary["tier"]:
            # The tier we chose failed and the router's fallback (fall_back_to_requested) answered.
            # Counted here, once per request: the failure event fires once per failed attempt.
            self.fail_open.add(f"chosen tier failed: {summary['tier']}")
        if summary.get("action") == "route":
            prices = {tier.name: tier.price_per_1k for tier in engine.tiers}
            observe_saving(str(summary.get("tenant", "")), served_by, tokens_of(response_obj), prices)
        answer, finish_reason = answer_of(response_obj)
        try:
            latency = (end_time - start_time).total_seconds()
        except (AttributeError, TypeError):
            latency = None
        outcome = Outcome(
            request_id=str(summary["request_id"]),
            served_by=served_by,
            answer=answer,
            finish_reason=finish_reason,
            latency_s=latency,
        )
        await arecord_or_count(engine, outcome, self.fail_open)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is not None and engine is not None:
            engine.load.finish(str(summary["request_id"]))
