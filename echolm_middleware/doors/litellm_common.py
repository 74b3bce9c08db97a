"""What both LiteLLM doors share: carrying the decision summary in request metadata, and recording from
LiteLLM's log events (a success records the outcome; a failure releases the request's load)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

# litellm fetches its cost map over the network on import unless told not to; air-gapped hosts have
# no network, and an explicit setting by the user still wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.integrations.custom_logger import CustomLogger

from echolm_middleware.core.engine import Engine
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.core.types import Outcome
from echolm_middleware.doors.access import (
    EngineHandle,
    FailOpenCounter,
    arecord_or_count,
    note_tier_failure,
    record_or_count,
    release_or_count,
)
from echolm_middleware.doors.litellm_stream_finalizer import guard_stream_finalizer
from echolm_middleware.metrics import observe_saving

# Before anything of ours runs in a LiteLLM process: on Python 3.11 LiteLLM's stream finalizer can crash it.
guard_stream_finalizer()

# Where a request carries our summary between the pre-call hook and the log events. The hook always
# overwrites it, so a caller cannot plant one.
METADATA_KEY = "echolm"
BYPASS_KEY = "echolm_bypass"
# The request metadata LiteLLM copies into its StandardLoggingPayload (metadata.spend_logs_metadata).
SPEND_LOGS_KEY = "spend_logs_metadata"
# The user LiteLLM's own auth gives its master key: the proxy admin, nobody's tenant.
PROXY_ADMIN_USER = "default_user_id"


def bypass_requested(value: object) -> bool:
    """Whether a caller's `echolm_bypass` asks us to stay out: true or "true" (any case), nothing else;
    "false", 0, "no" or garbage leave the request to us."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


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


def serve_reused(call: dict[str, Any], answer: str, usage: tuple[int, int], requested: str) -> None:
    """Answer the call with a cached answer instead of a model: LiteLLM's `mock_response`.

    Set before the call is dispatched (the proxy's pre-call hook, the Router strategy), a `ModelResponse`
    passes through routing, logging and cost like a real answer, streamed or not, and reaches every
    callback with its usage; LiteLLM strips a `mock_response` a client sends before any hook runs. A
    fresh object per call: LiteLLM returns and mutates it. Nothing to fall back from, so no fallbacks.
    """
    from litellm import ModelResponse
    from litellm.types.utils import Usage

    prompt, completion = usage
    call["mock_response"] = ModelResponse(
        model=requested,
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    )
    call.pop("fallbacks", None)


def served_group(kwargs: Mapping[str, Any], summary: DecisionSummary) -> str:
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
    return summary.tier


def as_served(summary: DecisionSummary, response: Any) -> DecisionSummary:
    """The summary as the caller should read it once the response exists: if the tier we chose failed
    and the router's fallback answered, the headers name the model that answered, as failing open."""
    extra = (getattr(response, "_hidden_params", None) or {}).get("additional_headers") or {}
    served = extra.get("x-litellm-model-group")
    if not summary.routed or not extra.get("x-litellm-attempted-fallbacks") or not served:
        return summary
    return summary.chosen_tier_failed(str(served))


def answer_of(response_obj: Any) -> tuple[str, str | None, bool]:
    """Text, finish reason and whether the tier refused (OpenAI's `refusal`), of a chat response."""
    try:
        choice = response_obj.choices[0]
        content = choice.message.content
        refusal = getattr(choice.message, "refusal", None)
        return (content if isinstance(content, str) else ""), choice.finish_reason, bool(refusal)
    except (AttributeError, IndexError, TypeError):
        return "", None, False


def upstream_finish_reason(kwargs: Mapping[str, Any], reported: str | None) -> str | None:
    """The finish reason the upstream itself sent with a non-streamed answer.

    LiteLLM reports "stop" where an OpenAI-compatible upstream sent none (null); the raw response it
    logs (`original_response`) still says what was sent. Other formats keep what LiteLLM `reported`.
    """
    raw = kwargs.get("original_response")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return reported
    choices = raw.get("choices") if isinstance(raw, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) and "finish_reason" in choices[0]:
        sent = choices[0]["finish_reason"]
        return sent if isinstance(sent, str) else None
    return reported


def client_hung_up(kwargs: Mapping[str, Any]) -> bool:
    """LiteLLM's mark on a call whose client disconnected: it still logs a success, with what was read."""
    params = kwargs.get("litellm_params") or {}
    for metadata in (params.get("metadata"), kwargs.get("metadata")):
        if isinstance(metadata, Mapping) and metadata.get("client_disconnected"):
            return True
    return False


def usage_of(response_obj: Any) -> tuple[int, int]:
    """Prompt and completion tokens of a response, (0, 0) when it reports no usage."""
    try:
        usage = response_obj.usage
        return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def saving_of(
    engine: Engine, summary: DecisionSummary, served_by: str, response_obj: Any, logged_cost: object
) -> float:
    """USD the strongest tier would have cost for this answer (its prompt without our examples) less what
    it cost: LiteLLM's own `response_cost` for the deployment that served it (0 for a reused answer on a
    zero-priced group), or the served tier's price where echolm's config overrides LiteLLM's."""
    prompt, completion = usage_of(response_obj)
    strongest = engine.tiers[-1].prices
    would_cost = strongest.cost(max(0, prompt - summary.example_tokens), completion)
    served = next((tier.prices for tier in engine.tiers if tier.name == served_by), None)
    if served is not None and served.overridden:
        cost = served.cost(prompt, completion)
    elif isinstance(logged_cost, int | float) and not isinstance(logged_cost, bool):
        cost = float(logged_cost)
    else:
        cost = served.cost(prompt, completion) if served is not None else 0.0
    return would_cost - cost


def summary_in(metadata: object) -> DecisionSummary | None:
    """The summary a door put in a request's metadata (`carry`), if any."""
    return DecisionSummary.from_metadata(metadata.get(METADATA_KEY)) if isinstance(metadata, Mapping) else None


def carry(metadata: dict[str, Any], summary: DecisionSummary) -> None:
    """Keep the summary in the request's metadata, where LiteLLM hands it to every callback of the call,
    and the caller's view of it in `spend_logs_metadata`, which LiteLLM copies into its
    `StandardLoggingPayload`: its spend logs, UI and logging callbacks (Langfuse, Datadog, ...) then show
    the model requested, the tier chosen and why. Beside whatever the caller put there, under "echolm"
    (a caller's own "echolm" entry is replaced). Not in `tags`: LiteLLM routes by tags when tag filtering
    is on, and budgets by them."""
    metadata[METADATA_KEY] = summary.to_metadata()
    spend_logs = metadata.get(SPEND_LOGS_KEY)
    # LiteLLM also accepts it as a JSON string (its x-litellm-spend-logs-metadata header).
    if isinstance(spend_logs, str):
        try:
            spend_logs = json.loads(spend_logs)
        except ValueError:
            spend_logs = None
    kept = dict(spend_logs) if isinstance(spend_logs, Mapping) else {}
    metadata[SPEND_LOGS_KEY] = {**kept, METADATA_KEY: summary.caller_view()}


def summary_from_kwargs(kwargs: Mapping[str, Any]) -> DecisionSummary | None:
    params = kwargs.get("litellm_params") or {}
    return summary_in(params.get("metadata") or kwargs.get("metadata") or {})


class RecordingCallback(CustomLogger):
    """Records outcomes from LiteLLM's log events (streamed responses arrive here once, assembled).

    A door that sees its streams go by (the proxy's iterator hook) records them itself, from what the
    client was sent: LiteLLM's assembled stream names "stop" as its finish reason whether or not the
    upstream sent one, and also when the client hung up part way.
    """

    records_streams_itself = False

    def __init__(self, handle: EngineHandle, counter: FailOpenCounter) -> None:
        super().__init__()
        self.handle = handle
        self.fail_open = counter
        # LiteLLM registers one callback per class and set of plain public fields, and drops the rest:
        # without a field of its own, a second door in one process (another Router, another engine)
        # would never be called, and its answers never recorded.
        self.instance = uuid.uuid4().hex

    def _outcome(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> tuple[Engine, Outcome] | None:
        """What a successful call's log event records (None: not ours, or recorded elsewhere)."""
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is None or engine is None or not summary.request_id:
            return None
        served_by = served_group(kwargs, summary)
        if served_by != summary.tier:
            # The tier we chose failed and the router's fallback (fall_back_to_requested) answered.
            # Counted here, once per request: the failure event fires once per failed attempt.
            self.fail_open.add(f"chosen tier failed: {summary.tier}")
        if summary.routed or summary.action == "reuse":
            observe_saving(
                summary.tenant, saving_of(engine, summary, served_by, response_obj, kwargs.get("response_cost"))
            )
        if self.records_streams_itself and kwargs.get("stream"):
            return None
        answer, finish_reason, refused = answer_of(response_obj)
        if not kwargs.get("stream"):
            finish_reason = upstream_finish_reason(kwargs, finish_reason)
        try:
            latency = (end_time - start_time).total_seconds()
        except (AttributeError, TypeError):
            latency = None
        outcome = Outcome(
            request_id=summary.request_id,
            served_by=served_by,
            answer=answer,
            finish_reason=finish_reason,
            latency_s=latency,
            cut_short="the client hung up" if client_hung_up(kwargs) else "",
            refused=refused,
        )
        return engine, outcome

    def _failed(self, kwargs: Any) -> None:
        """A call failed: its load ends, and where the error says its tier is failing, the router leaves
        that tier out for a while. LiteLLM fires this once per failed attempt, a fallback's included."""
        summary = summary_from_kwargs(kwargs)
        engine = self.handle.ready()
        if summary is not None and engine is not None and summary.request_id:
            release_or_count(engine, summary.request_id, self.fail_open)
            if summary.routed:
                note_tier_failure(engine, served_group(kwargs, summary), kwargs.get("exception"), self.fail_open)

    # LiteLLM calls the async events for async calls and the sync ones for sync calls (`Router.completion`),
    # each call once. Recording also ends the request's load on its tier (the engine does it first).

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        recorded = self._outcome(kwargs, response_obj, start_time, end_time)
        if recorded is not None:
            await arecord_or_count(*recorded, self.fail_open)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        recorded = self._outcome(kwargs, response_obj, start_time, end_time)
        if recorded is not None:
            record_or_count(*recorded, self.fail_open)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._failed(kwargs)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._failed(kwargs)
