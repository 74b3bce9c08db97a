"""The LiteLLM proxy door: one `callbacks` entry in config.yaml.

    litellm_settings:
      callbacks: integrations.litellm_proxy.proxy_handler      # from a checkout, next to config.yaml
      # callbacks: echolm_middleware.doors.litellm_proxy.proxy_handler   # from the wheel (the same object)

The pre-call hook picks the tier (rewrites `data["model"]`) and prepends examples; the success event
records the outcome. Anything of ours that fails or runs past its budget sends the request to the
model it named, unchanged (fail open), and is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

# FastAPI reads the route's parameter types from this module's names (annotations are strings here).
from fastapi import Depends, Request, Response

from echolm_middleware.config import (
    RequestSettings,
    check_reuse_group_exists,
    check_tiers_exist,
    config_path_from_env,
    load_settings,
    model_groups_in,
)
from echolm_middleware.core.engine import SHARED_TENANT, Engine
from echolm_middleware.core.generation_params import judged_params
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.doors.access import (
    EngineHandle,
    FailOpenCounter,
    arecord_or_count,
    logger,
    prepare_or_fail_open,
    release_or_count,
    summary_of,
)
from echolm_middleware.doors.bounded_threads import PREPARE, SCRAPES, WRITES, Saturated
from echolm_middleware.doors.litellm_common import (
    BYPASS_KEY,
    METADATA_KEY,
    PROXY_ADMIN_USER,
    RecordingCallback,
    as_served,
    bypass_requested,
    carry,
    fall_back_to_requested,
    serve_reused,
    summary_in,
)
from echolm_middleware.errors import EchoLMError, FeedbackAlreadyGiven, UnknownRequest
from echolm_middleware.factory import build_engine, build_state
from echolm_middleware.metrics import metrics, observe_decision, tenant_label

_CHAT_CALL_TYPES = frozenset({"acompletion", "completion"})
STARTED_KEY = "echolm_started"


# How LiteLLM 1.108 names its master key once authenticated (older versions keep the key itself).
_MASTER_KEY_ALIAS = "litellm_proxy_master_key"


def tenant_of(user_api_key_dict: Any) -> str:
    """The tenant from the authenticated key only: its team, else its user, else its virtual key; "" for
    no identity (the master key, or a key a proxy without a key database took on trust)."""
    if getattr(user_api_key_dict, "user_id", None) == PROXY_ADMIN_USER:
        return ""
    if getattr(user_api_key_dict, "api_key", None) == _MASTER_KEY_ALIAS:
        return ""
    for field, prefix in (("team_id", "team"), ("user_id", "user")):
        value = getattr(user_api_key_dict, field, None)
        if isinstance(value, str) and value:
            return f"{prefix}:{value}"
    token = getattr(user_api_key_dict, "token", None)
    # Without its database LiteLLM accepts any key and hashes whatever was sent: not an identity.
    if isinstance(token, str) and token and _proxy_has_key_database():
        return f"key:{token}"
    return ""


def allow_lists_of(user_api_key_dict: Any) -> tuple[tuple[str, ...], ...]:
    """The model allow-lists of the key and of its team. LiteLLM checks the model the caller named
    before our hook runs; any other tier we might pick must pass the same lists."""
    lists = []
    for field in ("models", "team_models"):
        models = getattr(user_api_key_dict, field, None)
        if isinstance(models, list | tuple) and models:
            lists.append(tuple(str(model) for model in models))
    return tuple(lists)


def _proxy_has_key_database() -> bool:
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    return getattr(proxy_server, "prisma_client", None) is not None


def caller_of(user_api_key_dict: Any) -> str:
    """Who asks within the tenant, kept with an example the request admits: the key's user, else the key
    (LiteLLM holds keys hashed; the hash is cut short here)."""
    user = getattr(user_api_key_dict, "user_id", None)
    if isinstance(user, str) and user:
        return f"user:{user}"
    token = getattr(user_api_key_dict, "token", None)
    return f"key:{token[:16]}" if isinstance(token, str) and token else ""


def _proxy_config_path() -> Path:
    """ECHOLM_CONFIG, else the config file the running proxy was started with."""
    configured = config_path_from_env()
    if configured is not None:
        return configured
    from litellm.proxy import proxy_server

    if proxy_server.user_config_file_path:
        return Path(proxy_server.user_config_file_path)
    raise FileNotFoundError("no config file: start the proxy with --config or set ECHOLM_CONFIG")


def tenancy_notice(shared: bool) -> str:
    """What the proxy says at start about requests with no team, user or virtual-key identity."""
    if shared:
        return (
            "tenancy.shared is on: requests with no team, user or virtual-key identity (the master key among"
            " them) share one cache, tenant 'shared'. Fine for one user; give each team its own key otherwise."
        )
    return (
        "tenancy.shared is off: requests with no team, user or virtual-key identity (the master key among"
        " them) pass through untouched. Give each team its own key, or set tenancy.shared: true for one user."
    )


def engine_from_proxy_config() -> Engine:
    """Build the engine from the `echolm` section of the proxy's own config file."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    settings, raw = load_settings(_proxy_config_path())
    check_tiers_exist(settings, model_groups_in(raw))
    model_list = raw.get("model_list") or []
    check_reuse_group_exists(settings.routing, model_groups_in(raw))
    # One state for the engine and its upkeep (with `state.backend: memory` there is no other copy).
    state = build_state(settings)
    engine = build_engine(settings, model_list, state=state)
    engine.warm_up()
    logger.warning("echolm: %s", tenancy_notice(settings.tenancy.shared))
    from echolm_middleware.factory import build_upkeep
    from echolm_middleware.scheduling import start_schedules

    try:
        start_schedules(settings.upkeep, lambda: build_upkeep(settings, model_list, engine=engine, state=state))
    except Exception as exc:  # the cache's upkeep is optional; routing must not go down with it
        logger.error("echolm: the upkeep scheduler did not start: %s", exc)
    return engine


METRICS_PATH = "/echolm/metrics"
GAUGE_REFRESH_TIMEOUT_S = 2.0


def mount_metrics_route() -> bool:
    """Serve our Prometheus metrics on the running proxy at METRICS_PATH; False outside a proxy.

    Tenant names are labels, so a scrape needs the proxy's master key (Authorization: Bearer ...) when
    the proxy has one, as LiteLLM's own admin routes do.
    """
    app = _proxy_app_without(METRICS_PATH)
    if app is None:
        return False
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    from echolm_middleware.metrics import CONTENT_TYPE

    async def echolm_metrics(request: Request) -> Response:
        master_key = getattr(proxy_server, "master_key", None)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if master_key and not hmac.compare_digest(given.encode(), str(master_key).encode()):
            return _plain(401, "master key required")
        handler = _our_handler()
        if handler is not None:
            # The store's size is read on a pool of its own, briefly: a hung store leaves the gauges as
            # they were, and the scrape still answers.
            with contextlib.suppress(Saturated, TimeoutError):
                await asyncio.wait_for(SCRAPES.run(handler.refresh_gauges), GAUGE_REFRESH_TIMEOUT_S)
        return Response(metrics().render(), media_type=CONTENT_TYPE)  # in memory: quick

    app.add_api_route(METRICS_PATH, echolm_metrics, methods=["GET"], include_in_schema=False)
    return True


FEEDBACK_PATH = "/echolm/feedback"


def mount_feedback_route() -> bool:
    """Take a caller's quality score for a past response on the running proxy at FEEDBACK_PATH; False
    outside a proxy.

        POST /echolm/feedback   Authorization: Bearer <the key the request was made with>
        {"request_id": "<its x-echolm-request-id header>", "score": 0.0-1.0}

    The caller is authenticated by LiteLLM's own auth (its key database, a `custom_auth` such as
    `static_keys`, or the master key), and the score counts for the tenant that key belongs to: another
    tenant's request id is unknown, exactly as one that never existed. Answers: 200 recorded; 404 no
    routed request of the caller's with that id; 409 already scored (a response counts once); 422 a body
    without a request id and a score in [0, 1]; 503 the engine not ready, its writers busy, or its state
    or store down.
    """
    app = _proxy_app_without(FEEDBACK_PATH)
    if app is None:
        return False
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

    authenticated = Depends(user_api_key_auth)  # the caller's key, checked as on LiteLLM's own routes

    async def echolm_feedback(request: Request, user_api_key_dict: Any = authenticated) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        request_id = body.get("request_id") if isinstance(body, dict) else None
        score = body.get("score") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id or isinstance(score, bool):
            return _plain(422, 'send {"request_id": "<x-echolm-request-id>", "score": <0-1>}')
        if not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
            return _plain(422, "score must be a number in [0, 1]")
        handler = _our_handler()
        engine = handler.handle.ready() if handler is not None else None
        if engine is None:
            return _plain(503, "echolm is not ready yet; send the feedback again shortly")
        tenant = tenant_of(user_api_key_dict) or (SHARED_TENANT if engine.settings.tenancy.shared else "")
        try:
            await WRITES.run(engine.feedback, request_id, float(score), tenant=tenant)
        except UnknownRequest:
            return _plain(404, f"no routed request {request_id[:80]!r} of this caller")
        except FeedbackAlreadyGiven:
            return _plain(409, f"request {request_id[:80]!r} already has feedback; it counts once")
        except Saturated:
            return _plain(503, "echolm's writers are busy; send the feedback again shortly")
        except EchoLMError as exc:  # the state or the store down: said by kind, no address or path
            logger.warning("echolm: feedback on %s not recorded: %s", request_id, exc)
            return _plain(503, f"echolm could not record it ({type(exc).__name__}); send it again later")
        return _plain(200, "recorded")

    app.add_api_route(FEEDBACK_PATH, echolm_feedback, methods=["POST"], include_in_schema=False)
    return True


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain")


def _proxy_app_without(path: str) -> Any:
    """The running proxy's FastAPI app if it does not serve `path` yet (each of our routes is mounted once,
    however many handlers a proxy loads); None outside a proxy."""
    app = getattr(sys.modules.get("litellm.proxy.proxy_server"), "app", None)
    if app is None or any(getattr(route, "path", None) == path for route in app.routes):
        return None
    return app


def _our_handler() -> EchoLMProxyHandler | None:
    """The proxy's EchoLM callback, the one whose engine our routes use."""
    import litellm

    return next((cb for cb in litellm.callbacks or [] if isinstance(cb, EchoLMProxyHandler)), None)


class EchoLMProxyHandler(RecordingCallback):
    """LiteLLM `CustomLogger` for the proxy; builds its engine in the background as soon as a running
    proxy loads it (elsewhere, on the first request)."""

    records_streams_itself = True  # in the streaming iterator hook, from what the client was sent

    def __init__(
        self, handle: EngineHandle | None = None, timeout_s: float | None = None, startup_wait_s: float = 30.0
    ) -> None:
        super().__init__(handle or EngineHandle(engine_from_proxy_config), FailOpenCounter())
        self._timeout_s = timeout_s
        self._budget_s: float | None = None  # requests.timeout_ms, read from the config once needed
        # Loading the embedder takes seconds; requests arriving meanwhile wait this long, then fail open.
        self._startup_wait_s = startup_wait_s
        metrics_mounted, feedback_mounted = mount_metrics_route(), mount_feedback_route()
        if metrics_mounted or feedback_mounted:
            # Inside a running proxy (each worker loads its own handler): build the engine now, so no
            # worker's first requests fail open while its embedder loads.
            self.handle.start()

    def refresh_gauges(self) -> None:
        """Examples per tenant and requests in flight per tier, read at scrape time (not per request)."""
        engine = self.handle.ready()
        if engine is None:
            return
        m = metrics()
        try:
            for tenant in engine.store.tenants():
                m.store_examples.labels(tenant=tenant_label(tenant)).set(engine.store.count(tenant))
        except Exception as exc:  # the store may be what is down; the scrape still answers
            logger.warning("echolm: store size unreadable for the metrics: %s", exc)
        try:
            in_flight = engine.load.in_flight()
            for tier in engine.tiers:
                m.in_flight.labels(tier=tier.name).set(in_flight.get(tier.name, 0))
        except Exception as exc:  # a shared load board (Redis) may be what is down
            logger.warning("echolm: load unreadable for the metrics: %s", exc)

    def _timeout(self) -> float:
        if self._timeout_s is not None:
            return self._timeout_s
        engine = self.handle.ready()
        if engine is not None:
            return engine.settings.requests.timeout_ms / 1000
        # The first build (loading the embedder) may take the start-up wait; once a build has failed (the
        # store down at start, say), each request waits only its own budget for the retried one.
        return self._configured_budget() if self.handle.failed_builds else self._startup_wait_s

    def _configured_budget(self) -> float:
        if self._budget_s is None:
            try:
                self._budget_s = load_settings(_proxy_config_path())[0].requests.timeout_ms / 1000
            except Exception:  # a config the engine's build will report on; the default meanwhile
                self._budget_s = RequestSettings().timeout_ms / 1000
        return self._budget_s

    async def async_filter_listed_models(self, user_api_key_dict: Any, model_names: Any) -> Any:
        # Listing models (a readiness probe, say) starts building the engine before the first request.
        self.handle.start()
        return model_names

    # Must be defined on this class itself: LiteLLM skips subclasses that only inherit the hook.
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        if call_type not in _CHAT_CALL_TYPES or not isinstance(data, dict):
            return data
        started = time.perf_counter()
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
            data["metadata"] = metadata
        metadata.pop(METADATA_KEY, None)  # never trust a summary the caller sent
        metadata.pop(STARTED_KEY, None)  # nor a start time
        messages = data.get("messages")
        request = ChatRequest(
            tenant=tenant_of(user_api_key_dict),
            model=str(data.get("model", "")),
            messages=messages if isinstance(messages, list) else [],
            has_tools=bool(data.get("tools") or data.get("functions")),
            params=judged_params(data),
            caller=caller_of(user_api_key_dict),
            allowed_models=allow_lists_of(user_api_key_dict),
        )
        if bypass_requested(metadata.pop(BYPASS_KEY, False)):
            summary = await self._bypass(request)
            observe_decision(summary)  # counted like every other request
        else:
            prepared, _ = await prepare_or_fail_open(self.handle, self.fail_open, self._timeout(), request)
            if prepared is not None and prepared.reused_answer is not None:
                data["model"] = prepared.tier
                serve_reused(data, prepared.reused_answer, prepared.reused_usage, request.model)
            elif prepared is not None and prepared.routed:
                if prepared.tier != request.model or prepared.decision.examples:
                    fall_back_to_requested(data, prepared.tier, request.model, list(request.messages))
                data["model"] = prepared.tier
                data["messages"] = prepared.messages
            summary = summary_of(request, prepared)
        # What this hook added to the request's latency, end to end (thread hop and waits included).
        carry(metadata, summary.with_overhead((time.perf_counter() - started) * 1000))
        # When the request leaves us for its tier: a stream's latency, the tier's service time, is measured
        # from here (LiteLLM times non-streamed calls itself), so our own wait (the first requests wait
        # for the engine to load) is not taken for the tier's.
        metadata[STARTED_KEY] = time.monotonic()
        return data

    async def _bypass(self, request: ChatRequest) -> DecisionSummary:
        """The caller opted out: the request goes unchanged; the decision is kept if the engine is up."""
        engine = self.handle.ready()
        if engine is not None:
            try:
                # Within the request's budget like every other decision: keeping it writes to the state.
                kept = await asyncio.wait_for(PREPARE.run(engine.bypass, request), self._timeout())
                return DecisionSummary.of(kept.decision)
            except Exception as exc:
                self.fail_open.add("bypass: could not keep the decision", exc)
        return DecisionSummary.without_decision(request.model, "pass_through", "bypass requested", request.tenant)

    # Must be defined on this class itself, like the pre-call hook: LiteLLM checks the class's own dict.
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Relays a streamed answer unchanged, and records it once the client has read it to its end.

        A stream that does not run to its end (the client hung up, perhaps before the first token, when
        LiteLLM fires no log event at all) is never recorded, and releases its tier's load.
        """
        finished = False
        stream = _StreamSeen()
        try:
            async for chunk in response:
                stream.add(chunk)
                yield chunk
            finished = True
        finally:
            if not finished:
                self._release(request_data)
        await self._record_stream(request_data, response, stream)

    async def _record_stream(self, request_data: Any, response: Any, stream: _StreamSeen) -> None:
        summary = summary_in(request_data.get("metadata")) if isinstance(request_data, dict) else None
        engine = self.handle.ready()
        if summary is None or not summary.request_id or engine is None:
            return
        upstream_reason = upstream_finish_reason(response, stream.finish_reason)
        started = request_data["metadata"].get(STARTED_KEY)
        outcome = Outcome(
            request_id=summary.request_id,
            served_by=as_served(summary, response).tier,
            answer=stream.text,
            latency_s=time.monotonic() - started if isinstance(started, float) else None,
            finish_reason=upstream_reason,
            cut_short="" if upstream_reason else "the stream ended without the upstream's finish reason",
            refused=stream.refused,
        )
        await arecord_or_count(engine, outcome, self.fail_open)

    def _release(self, request_data: Any) -> None:
        summary = summary_in(request_data.get("metadata")) if isinstance(request_data, dict) else None
        engine = self.handle.ready()
        if summary is not None and summary.request_id and engine is not None:
            release_or_count(engine, summary.request_id, self.fail_open)

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, object] | None = None,
    ) -> dict[str, str] | None:
        summary = summary_in(data.get("metadata")) if isinstance(data, dict) else None
        return as_served(summary, response).headers() if summary is not None else None

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        # Non-streamed responses also carry the decision in the body, beside the headers.
        summary = summary_in(data.get("metadata")) if isinstance(data, dict) else None
        if summary is not None and response is not None:
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                setattr(response, METADATA_KEY, summary.caller_view())
        return response


def upstream_finish_reason(response: Any, seen: str | None) -> str | None:
    """The finish reason the upstream itself sent on a stream, None when it sent none.

    The client is sent a "stop" of LiteLLM's making when the upstream ends without one, so what the
    client saw (`seen`) cannot tell. LiteLLM's stream wrapper keeps the upstream's chunks, the last with
    its finish reason only if the upstream sent one (litellm 1.108: `chunks`, which the Router's fallback
    wrapper shares with the stream it wraps); a stream behind another wrapper falls back to `seen`.
    """
    chunks = getattr(response, "chunks", None)
    if isinstance(chunks, list):
        reasons = [getattr(choice, "finish_reason", None) for chunk in chunks for choice in _choices(chunk)]
        return next((reason for reason in reversed(reasons) if reason), None)
    return seen


def _choices(chunk: Any) -> list[Any]:
    choices = getattr(chunk, "choices", None)
    return list(choices) if isinstance(choices, list) else []


class _StreamSeen:
    """What the client of a stream was sent: the text, the last finish reason, whether the tier refused."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.finish_reason: str | None = None
        self.refused = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, chunk: Any) -> None:
        try:
            choice = chunk.choices[0]
        except (AttributeError, IndexError, TypeError):
            return
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None)
        if isinstance(content, str):
            self._parts.append(content)
        self.refused = self.refused or bool(getattr(delta, "refusal", None))
        self.finish_reason = getattr(choice, "finish_reason", None) or self.finish_reason


# The instance LiteLLM's config names; constructing it does no I/O.
proxy_handler = EchoLMProxyHandler()
