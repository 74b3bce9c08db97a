"""The LiteLLM Router door, for applications that embed `litellm.Router` in code.

    router = litellm.Router(model_list=[...cheap..., ...strong...])
    door = install_echolm(router, engine)          # engine = build_engine(settings, the same model_list)
    await router.acompletion(model="strong", messages=[...], metadata={"echolm_tenant": "acme"})
    router.completion(...)                         # the sync path is routed and recorded the same way

A call that names no `echolm_tenant` passes through untouched, unless `tenancy.shared` is on.

The custom routing strategy asks the engine for the tier, then a deployment in that tier is picked the
Router's way: up to LiteLLM 1.109 by the Router's own selection (its `routing_strategy` included); from
1.110, where a registered strategy picks every deployment and the Router's own pick would come back to
it, among the tier's healthy deployments (the Router's cooldowns, pre-call checks and retry exclusions)
by LiteLLM's default weighted shuffle. A callback records the outcome. Fails open exactly like the proxy door; when
the tier we chose fails and the Router retries (`num_retries`), the retry goes to the model the caller
named with the caller's own messages.

The caller's message list and metadata dict are never changed: applications reuse both across calls,
and LiteLLM may run one call's log events after the next call has begun. What we send and what we
decided go into the attempt's own `request_kwargs` (whose `messages` and `metadata` the Router sends
on in place of the caller's: a fresh dict per attempt up to 1.109, one dict for all attempts from 1.110,
so a retry puts the caller's own back), and a call is known across its retries by the
`litellm_trace_id` the Router gives it.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from litellm.router import Router
from litellm.types.router import CustomRoutingStrategyBase

from echolm_middleware.config import check_reuse_group_exists
from echolm_middleware.core.engine import Engine
from echolm_middleware.core.generation_params import judged_params
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.core.types import ChatRequest, Prepared
from echolm_middleware.doors.access import (
    TENANT_KEY,
    EngineHandle,
    FailOpenCounter,
    prepare_or_fail_open,
    prepare_or_fail_open_sync,
    summary_of,
)
from echolm_middleware.doors.litellm_common import RecordingCallback, carry, serve_reused

# How many calls' decisions the strategy remembers for their retries. A retry follows its failed
# attempt within the Router's backoff, so only the newest calls matter; the bound keeps memory flat.
_REMEMBERED_CALLS = 4096


def _tenant(request_kwargs: Mapping[str, Any] | None) -> str:
    # In-process callers are the application itself, which knows who it serves. A call that names no
    # tenant has no identity: it passes through unless the settings share one cache (tenancy.shared).
    metadata = (request_kwargs or {}).get("metadata") or {}
    tenant = metadata.get(TENANT_KEY) if isinstance(metadata, Mapping) else None
    return str(tenant) if tenant else ""


def takes_plugins(router: Router) -> bool:
    """LiteLLM 1.110 and later: a strategy is registered as a plugin and picks every deployment itself."""
    return hasattr(router, "register_plugin")


class _HealthyShuffle:
    """A deployment in a tier on LiteLLM 1.110+: the Router's healthy ones (cooldowns, pre-call checks, retry
    exclusions applied), then LiteLLM's default weighted shuffle, as LiteLLM's own registered strategies do.
    Its `select(kind="pick")` would call this strategy again."""

    def __init__(self, router: Router) -> None:
        # Typed as Any: the pinned LiteLLM the type check runs on (1.108) has no `litellm.router_api`.
        routing_api: Any = importlib.import_module("litellm.router_api")
        self._context = routing_api.RoutingContext(router)

    def _pick(self, tier: str, healthy: Any, kwargs: dict[str, Any]) -> Any:
        from litellm.router_strategy.simple_shuffle import simple_shuffle

        if isinstance(healthy, dict):
            return healthy
        if not healthy:
            raise ValueError(f"no healthy deployment in model group {tier!r}")
        registry = self._context.registry()
        return simple_shuffle(lambda name: registry.resolve(name, kind="alias"), healthy, tier, kwargs)

    def _healthy(self, tier: str, kwargs: dict[str, Any], messages: Any, input: Any, specific: bool | None) -> Any:
        # The messages as they will be sent (ours where we rewrote them), for the pre-call checks.
        sent = kwargs.get("messages", messages)
        return self._context.select(
            tier, kwargs, kind="healthy", messages=sent, input=input, specific_deployment=specific
        )

    async def apick(self, tier: str, kwargs: dict[str, Any], messages: Any, input: Any, specific: bool | None) -> Any:
        return self._pick(tier, await self._healthy(tier, kwargs, messages, input, specific), kwargs)

    def pick(self, tier: str, kwargs: dict[str, Any], messages: Any, input: Any, specific: bool | None) -> Any:
        healthy = self._run_here(lambda: self._healthy(tier, kwargs, messages, input, specific))
        return self._pick(tier, healthy, kwargs)

    def _run_here(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """`select` is async; a sync call runs it as LiteLLM's core runs its routing-cache reads on one
        (`run_routing_cache_sync`): with Redis through LiteLLM's sync bridge, else to the end right here,
        since without Redis it never waits on anything."""
        if self._context.health().store.redis_cache is not None:
            asyncify: Any = importlib.import_module("litellm.litellm_core_utils.asyncify")
            return asyncify.run_async_function(make)
        running: Any = make()
        try:
            while True:
                running.send(None)
        except StopIteration as finished:
            return finished.value


class EchoLMRoutingStrategy(CustomRoutingStrategyBase):
    """Chooses the tier (model group) per request; a deployment in it is picked the Router's way (above)."""

    def __init__(self, router: Router, handle: EngineHandle, counter: FailOpenCounter, timeout_s: float) -> None:
        self._router = router
        self._handle = handle
        self._counter = counter
        self._timeout_s = timeout_s
        self._shuffle = _HealthyShuffle(router) if takes_plugins(router) else None
        if self._shuffle is None:  # captured before the strategy replaces them on the instance
            self._default_async = router.async_get_available_deployment
            self._default_sync = router.get_available_deployment
        # Per call: what we decided and the caller's own messages, which a retry is sent with.
        self._decided: OrderedDict[str, tuple[DecisionSummary, list[Any]]] = OrderedDict()

    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        target = model
        if request_kwargs is None:
            request_kwargs = {}  # the Router requires a dict
        if messages is not None and not specific_deployment:
            target = await self._route(model, messages, request_kwargs)
        if self._shuffle is not None:
            return await self._shuffle.apick(target, request_kwargs, messages, input, specific_deployment)
        return await self._default_async(
            model=target,
            messages=messages,
            input=input,
            specific_deployment=specific_deployment,
            request_kwargs=request_kwargs,
        )

    def get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        target = model
        if messages is not None and not specific_deployment:
            target = self._route_sync(model, messages, request_kwargs)
        if self._shuffle is not None:
            kwargs = request_kwargs if request_kwargs is not None else {}
            return self._shuffle.pick(target, kwargs, messages, input, specific_deployment)
        return self._default_sync(
            model=target,
            messages=messages,
            input=input,
            specific_deployment=specific_deployment,
            request_kwargs=request_kwargs,
        )

    async def _route(self, model: str, messages: list[Any], request_kwargs: dict[str, Any] | None) -> str:
        kwargs = request_kwargs if request_kwargs is not None else {}
        call_id, decided = self._earlier_decision(kwargs)
        if call_id is not None and decided is not None:
            return self._retried(model, kwargs, call_id, decided)
        request = self._request(model, messages, kwargs)
        prepared, _ = await prepare_or_fail_open(self._handle, self._counter, self._timeout_s, request)
        return self._apply(model, kwargs, call_id, request, prepared)

    def _route_sync(self, model: str, messages: list[Any], request_kwargs: dict[str, Any] | None) -> str:
        """`_route` for `Router.completion`: the same decision, waited for on this thread within the budget."""
        kwargs = request_kwargs if request_kwargs is not None else {}
        call_id, decided = self._earlier_decision(kwargs)
        if call_id is not None and decided is not None:
            return self._retried(model, kwargs, call_id, decided)
        request = self._request(model, messages, kwargs)
        prepared, _ = prepare_or_fail_open_sync(self._handle, self._counter, self._timeout_s, request)
        return self._apply(model, kwargs, call_id, request, prepared)

    def _earlier_decision(
        self, kwargs: Mapping[str, Any]
    ) -> tuple[str | None, tuple[DecisionSummary, list[Any]] | None]:
        """The call's id (LiteLLM's trace id, kept across its retries) and what we decided for it already."""
        trace_id = kwargs.get("litellm_trace_id")
        call_id = trace_id if isinstance(trace_id, str) else None
        return call_id, self._decided.get(call_id) if call_id is not None else None

    @staticmethod
    def _request(model: str, messages: list[Any], kwargs: Mapping[str, Any]) -> ChatRequest:
        return ChatRequest(
            tenant=_tenant(kwargs),
            model=model,
            messages=list(messages),
            has_tools=bool(kwargs.get("tools") or kwargs.get("functions")),
            params=judged_params(kwargs),
        )

    def _apply(
        self, model: str, kwargs: dict[str, Any], call_id: str | None, request: ChatRequest, prepared: Prepared | None
    ) -> str:
        """The decision onto the call: the tier (model group) to pick a deployment in, and its messages."""
        if prepared is None:
            return model
        summary = summary_of(request, prepared)
        self._carry(kwargs, summary)
        if call_id is not None:
            self._remember(call_id, summary, list(request.messages))
        if prepared.reused_answer is not None:
            serve_reused(kwargs, prepared.reused_answer, prepared.reused_usage, model)
            return prepared.tier
        if prepared.routed:
            kwargs["messages"] = list(prepared.messages)
            return prepared.tier
        return model

    def _retried(
        self, model: str, kwargs: dict[str, Any], call_id: str, decided: tuple[DecisionSummary, list[Any]]
    ) -> str:
        """The Router retries a call we already decided: the tier we chose failed. The retry goes to the
        model the caller named with the caller's own messages (fail open), and is decided only once."""
        summary, callers_messages = decided
        if summary.action != "fail_open" and (summary.tier != model or summary.examples):
            self._counter.add(f"chosen tier failed: {summary.tier}")
            summary = summary.chosen_tier_failed(model)
            self._remember(call_id, summary, callers_messages)
        # From 1.110 the retry's kwargs are the first attempt's, our examples in its messages.
        kwargs["messages"] = list(callers_messages)
        self._carry(kwargs, summary)
        return model

    def _remember(self, call_id: str, summary: DecisionSummary, callers_messages: list[Any]) -> None:
        self._decided[call_id] = (summary, callers_messages)
        self._decided.move_to_end(call_id)
        while len(self._decided) > _REMEMBERED_CALLS:
            self._decided.popitem(last=False)

    @staticmethod
    def _carry(kwargs: dict[str, Any], summary: DecisionSummary) -> None:
        """This attempt's own copy of the caller's metadata, with our summary, for its log events."""
        callers = kwargs.get("metadata")
        metadata = dict(callers) if isinstance(callers, Mapping) else {}
        carry(metadata, summary)
        kwargs["metadata"] = metadata


class EchoLMRouterDoor:
    """What `install_echolm` returns: the strategy, the recording callback and the fail-open counts."""

    def __init__(self, strategy: EchoLMRoutingStrategy, callback: RecordingCallback, engine: Engine) -> None:
        self.strategy = strategy
        self.callback = callback
        self.engine = engine

    @property
    def fail_open_counts(self) -> dict[str, int]:
        return dict(self.callback.fail_open.counts)


def install_echolm(router: Router, engine: Engine, *, timeout_s: float | None = None) -> EchoLMRouterDoor:
    """Route `router`'s chat calls through the engine and record their outcomes (loads the embedder now)."""
    import litellm

    plugins: Any = router  # from 1.110 (the type check runs on 1.108, which has neither member)
    groups = plugins.registry().names() if takes_plugins(router) else router.get_model_names()
    check_reuse_group_exists(engine.settings.routing, groups)
    engine.warm_up()
    handle = EngineHandle(lambda: engine)
    handle.start().result()
    counter = FailOpenCounter()
    budget = timeout_s if timeout_s is not None else engine.settings.requests.timeout_ms / 1000
    strategy = EchoLMRoutingStrategy(router, handle, counter, budget)
    if takes_plugins(router):
        plugins.register_plugin(strategy)
    else:
        router.set_custom_routing_strategy(strategy)
    callback = RecordingCallback(handle, counter)
    litellm.callbacks.append(callback)
    return EchoLMRouterDoor(strategy, callback, engine)
