"""The one composition root: wires the backends named in Settings into an Engine."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from echolm_middleware.backends.chroma_store import ChromaExampleStore
from echolm_middleware.backends.memory_store import InMemoryExampleStore
from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.backends.token_counters import tier_token_counters
from echolm_middleware.config import Settings, TierSettings
from echolm_middleware.core.engine import Engine, EngineSettings
from echolm_middleware.core.ports import (
    Completer,
    DecisionHistory,
    DecisionLog,
    Embedder,
    ExampleStore,
    Leases,
    LoadBoard,
    RouterStatsStore,
    TokenCounter,
    UpkeepJournal,
)
from echolm_middleware.core.routing import TierProfile, TokenPrices
from echolm_middleware.errors import ConfigError
from echolm_middleware.quality_target import guard_for
from echolm_middleware.quality_target.guard import QualityGuard
from echolm_middleware.quality_target.shadow import Shadow
from echolm_middleware.upkeep import Upkeep

STORES: dict[str, Callable[[Settings], ExampleStore]] = {
    "chroma": lambda s: ChromaExampleStore(s.store),
    "memory": lambda s: InMemoryExampleStore(),
}
EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {
    "minilm": lambda s: MiniLMEmbedder(s.embedder),
}


class State(DecisionLog, DecisionHistory, RouterStatsStore, Leases, UpkeepJournal, Protocol):
    """What a state backend keeps in one place: the engine's decisions and router statistics, and what
    the upkeep reads and writes beside them (decision history, journal, leases)."""


STATES: dict[str, Callable[[Settings], State]] = {
    "sqlite": lambda s: SQLiteState(
        s.state.path, retention_s=s.state.retention_days * 86400, busy_timeout_s=s.state.busy_timeout_s
    ),
    "memory": lambda s: SQLiteState(":memory:"),
}


def build_state(settings: Settings) -> State:
    """The state backend named in settings; pass it to build_engine and build_upkeep to share it."""
    return STATES[settings.state.backend](settings)


def deployment_prices(deployment: Mapping[str, Any]) -> TokenPrices | None:
    """LiteLLM's price for a deployment, as LiteLLM itself charges it: the deployment's own
    `input_cost_per_token`/`output_cost_per_token` (in `litellm_params` or `model_info`), else LiteLLM's
    cost map for its model; None when LiteLLM knows no price."""
    params = deployment.get("litellm_params") or {}
    for source in (params, deployment.get("model_info") or {}):
        if "input_cost_per_token" in source or "output_cost_per_token" in source:
            return TokenPrices(
                float(source.get("input_cost_per_token") or 0) * 1000,
                float(source.get("output_cost_per_token") or 0) * 1000,
            )
    model = str(params.get("model") or "")
    if not model:
        return None
    from echolm_middleware.backends._lazy import require

    litellm = require("litellm", "litellm")
    entry = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
    if not entry:
        return None
    return TokenPrices(
        float(entry.get("input_cost_per_token") or 0) * 1000, float(entry.get("output_cost_per_token") or 0) * 1000
    )


def _deployment(tier: str, model_list: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((entry for entry in model_list if entry.get("model_name") == tier), None)


def tier_profiles(
    tiers: Sequence[TierSettings],
    model_list: Sequence[Mapping[str, Any]] = (),
    price_lookup: Callable[[Mapping[str, Any]], TokenPrices | None] = deployment_prices,
) -> list[TierProfile]:
    """Tiers in the order given (cheapest first), with costs scaled to [0, 1] by the dearest.

    A tier's price is LiteLLM's for its model group's first deployment (`deployment_prices`), unless
    `cost_per_1k_tokens` overrides it. With no model list at all (an engine in process, the LangChain
    door's) a tier without that key is unpriced: tiers all unpriced are costed by rank."""
    token_prices = []
    for index, tier in enumerate(tiers):
        if tier.cost_per_1k_tokens is not None:
            token_prices.append(TokenPrices(tier.cost_per_1k_tokens, tier.cost_per_1k_tokens, overridden=True))
            continue
        if not model_list:
            token_prices.append(TokenPrices())
            continue
        deployment = _deployment(tier.name, model_list)
        found = price_lookup(deployment) if deployment is not None else None
        if found is None:
            model = (deployment or {}).get("litellm_params", {}).get("model") if deployment else None
            raise ConfigError(
                f"echolm.tiers[{index}].cost_per_1k_tokens: not set, and litellm has no price for "
                f"model group {tier.name!r} ({model or 'no deployment found'}): give its deployment "
                "input_cost_per_token/output_cost_per_token, or set this key"
            )
        token_prices.append(found)
    prices = [price.blended_per_1k for price in token_prices]
    if any(b < a for a, b in itertools.pairwise(prices)):
        raise ConfigError("echolm.tiers: list tiers from cheapest to dearest (the last one is the strongest)")
    top = max(prices)
    return [
        TierProfile(
            name=tier.name,
            rank=index,
            # Free local tiers still differ: fall back to rank when every price is zero.
            cost=(price / top) if top > 0 else (index / max(1, len(tiers) - 1)),
            capacity=tier.capacity,
            quality_prior=tier.quality_prior,
            max_input_tokens=tier.max_input_tokens,
            prices=token_price,
        )
        for index, (tier, price, token_price) in enumerate(zip(tiers, prices, token_prices, strict=True))
    ]


def build_engine(
    settings: Settings,
    model_list: Sequence[Mapping[str, Any]] = (),
    *,
    embedder: Embedder | None = None,
    store: ExampleStore | None = None,
    tokens: TokenCounter | None = None,
    shadow: Shadow | None = None,
    load: LoadBoard | None = None,
    state: State | None = None,
) -> Engine:
    """Build the engine from settings; tests pass their own ports to inject faults."""
    state = state or build_state(settings)
    tier_tokens = None
    if tokens is None:  # each tier counts with its own tokenizer; the strongest's counts for the rest
        tier_tokens = tier_token_counters([(tier.name, tier.tokenizer) for tier in settings.tiers], model_list)
        tokens = tier_tokens[settings.tiers[-1].name]
    if load is None and settings.coordination.redis_url:
        load = build_load_board(settings)
    return Engine(
        EngineSettings(
            retrieval=settings.retrieval,
            augmentation=settings.augmentation,
            routing=settings.routing,
            admission=settings.admission,
            requests=settings.requests,
            upkeep=settings.upkeep,
            tenancy=settings.tenancy,
        ),
        tier_profiles(settings.tiers, model_list),
        embedder=embedder or EMBEDDERS[settings.embedder.backend](settings),
        store=store or STORES[settings.store.backend](settings),
        tokens=tokens,
        tier_tokens=tier_tokens,
        decisions=state,
        stats=state,
        quality=build_quality_guard(settings, model_list, shadow=shadow),
        load=load,
    )


def build_quality_guard(
    settings: Settings, model_list: Sequence[Mapping[str, Any]], *, shadow: Shadow | None = None
) -> QualityGuard | None:
    """The quality target the settings ask for (None without one). Its comparisons call the strongest tier
    directly from the config's model_list unless a `shadow` is given (tests)."""
    target = settings.routing.quality_target
    if target is None:
        return None
    if shadow is None:
        if not model_list:
            return None  # nothing to reach the strongest tier through (a LangChain-only setup)
        from echolm_middleware.backends.litellm_completer import LiteLLMCompleter
        from echolm_middleware.quality_target.shadow import ShadowComparisons

        shadow = ShadowComparisons(
            LiteLLMCompleter(model_list),
            settings.tiers[-1].name,
            metric=target.metric,
            max_tokens=target.max_answer_tokens,
        )
    return guard_for(target, shadow)


def build_load_board(settings: Settings) -> LoadBoard:
    """Per-tier load shared between workers through Redis (coordination.redis_url)."""
    from echolm_middleware.backends.redis_coordination import RedisLoadBoard, redis_client

    return RedisLoadBoard(
        redis_client(settings.coordination),
        settings.coordination,
        window_s=settings.routing.load_window_s,
        stale_after_s=settings.routing.load_stale_after_s,
    )


def build_leases(settings: Settings, state: Leases) -> Leases:
    """The upkeep's locks: in Redis when workers share one, else in the state database beside them."""
    if not settings.coordination.redis_url:
        return state
    from echolm_middleware.backends.redis_coordination import RedisLeases, redis_client

    return RedisLeases(redis_client(settings.coordination), settings.coordination)


def build_upkeep(
    settings: Settings,
    model_list: Sequence[Mapping[str, Any]],
    *,
    engine: Engine | None = None,
    state: State | None = None,
    completer: Completer | None = None,
) -> Upkeep:
    """The upkeep over an engine (built here unless given) and the strongest tier from the model list.

    Give the engine's `state` with the engine. Without it, the state is opened again from settings: the
    same database for a file, but an empty one for `memory`, which is refused.
    """
    from echolm_middleware.backends.litellm_completer import LiteLLMCompleter

    if state is None:
        if engine is not None and settings.state.backend == "memory":
            raise ConfigError("an upkeep over a given engine with state.backend memory needs that engine's state")
        state = build_state(settings)
    engine = engine or build_engine(settings, model_list, state=state)
    # The strongest tier's price, as the router has it (echolm's override, else LiteLLM's).
    price_per_1k = engine.tiers[-1].price_per_1k
    return Upkeep(
        engine,
        completer or LiteLLMCompleter(model_list),
        settings.upkeep,
        history=state,
        journal=state,
        leases=build_leases(settings, state),
        price_per_token_usd=price_per_1k / 1000,
    )
