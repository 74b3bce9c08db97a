"""The engine every door calls: retrieve examples, augment the prompt, pick a tier, record the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from echolm_middleware.config import (
    AdmissionSettings,
    AugmentationSettings,
    RequestSettings,
    RetrievalSettings,
    RoutingSettings,
    TenancySettings,
    UpkeepSettings,
)
from echolm_middleware.core import selection
from echolm_middleware.core.example_threshold import EVIDENCE_TIER, Arm, evidence_bucket, tenant_threshold
from echolm_middleware.core.generation_params import judge_params
from echolm_middleware.core.injection import looks_like_injection, looks_like_instructions
from echolm_middleware.core.pii import scrub
from echolm_middleware.core.ports import (
    DecisionLog,
    Embedder,
    ExampleStore,
    LoadBoard,
    QualityCheck,
    RouterStatsStore,
    TokenCounter,
)
from echolm_middleware.core.prompting import augment
from echolm_middleware.core.requests import RequestView, context_key, inspect_request, is_valid_utf8
from echolm_middleware.core.reuse import STORED_PREFIX as REUSE_STORED_PREFIX
from echolm_middleware.core.reuse import ReuseCandidate, ReuseModels, why_not_reused
from echolm_middleware.core.routing import (
    LoadTracker,
    TierDelay,
    TierProfile,
    choose_tier,
    context_bucket,
    expected_delays,
    score_tiers,
    tier_bucket,
)
from echolm_middleware.core.service_time import ServiceTimes
from echolm_middleware.core.tier_health import TierHealth
from echolm_middleware.core.types import (
    Candidate,
    ChatRequest,
    Decision,
    Example,
    ExampleTrace,
    Outcome,
    Prepared,
    RecordResult,
    ScoredExample,
    TierScore,
)
from echolm_middleware.core.upkeep_rules import after_cheap_use, after_feedback, after_passed_over
from echolm_middleware.core.whole_answers import why_not_whole
from echolm_middleware.errors import FeedbackAlreadyGiven, UnknownRequest

logger = logging.getLogger("echolm")

_QUERY_VECTOR_CACHE = 4096
# What of a question is embedded: far more than MiniLM's 256 word pieces in any text but a pathological
# one, so the vector is the whole question's (and serves its admission), without tokenizing 200k characters.
_EMBEDDED_CHARS = 8_000
_WARM_UP_TENANT = "echolm-warm-up"
# Where requests with no identity go when the operator shares one cache between them (tenancy.shared).
SHARED_TENANT = "shared"


@dataclass(frozen=True)
class EngineSettings:
    """The sub-settings the engine reads (never the whole Settings tree)."""

    retrieval: RetrievalSettings
    augmentation: AugmentationSettings
    routing: RoutingSettings
    admission: AdmissionSettings
    requests: RequestSettings
    upkeep: UpkeepSettings = field(default_factory=UpkeepSettings)
    tenancy: TenancySettings = field(default_factory=TenancySettings)


def _expected_quality(decision: Decision, tier: str) -> float:
    """The router's quality estimate for the tier that served, when it decided (0.5 if it has none)."""
    return next((score.quality for score in decision.scores if score.tier == tier), 0.5)


# LiteLLM's names for "every model" in a key's or team's list.
_EVERY_MODEL = frozenset({"*", "all-proxy-models"})


def _allowed(tier: str, request: ChatRequest) -> bool:
    """Whether every allow-list the caller carries admits the tier (the tier named always is: the host
    checked that before us). A list naming only access groups admits no other tier: never wider."""
    if tier == request.model:
        return True
    return all(
        not models or any(m in _EVERY_MODEL or fnmatch.fnmatchcase(tier, m) for m in models)
        for models in request.allowed_models
    )


def tenant_bucket(bucket: str, tenant: str) -> str:
    """How a tenant's posterior for a context bucket is stored (bucket names hold no "|")."""
    return f"{bucket}|{tenant}"


def _by_tenant(
    stored: Mapping[tuple[str, str], tuple[float, float]],
) -> dict[str, dict[tuple[str, str], tuple[float, float]]]:
    """Stored posteriors split by tenant; ones kept before they were per tenant (no "|") are left out."""
    split: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    for (tier, key), counts in stored.items():
        bucket, sep, tenant = key.partition("|")
        if sep:
            split.setdefault(tenant, {})[(tier, bucket)] = counts
    return split


def _weights_by_tenant(stored: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Stored utility weights ("name|tenant") split by tenant; ones kept before they were per tenant (no "|",
    fitted to every tenant's feedback at once) are left out, as the posteriors' are."""
    split: dict[str, dict[str, float]] = {}
    for key, value in stored.items():
        name, sep, tenant = key.partition("|")
        if sep and not name.startswith(REUSE_STORED_PREFIX):  # the reuse model's, kept beside them
            split.setdefault(tenant, {})[name] = value
    return split


def _copied(messages: Sequence[Any]) -> list[Any]:
    """The caller's messages, each object copied; anything malformed is passed on as it came."""
    return [dict(message) if isinstance(message, Mapping) else message for message in messages]


def example_id(tenant: str, context: str, prompt: str) -> str:
    """Id of a tenant's example for a prompt, exactly as asked, in one context. The store never replaces
    an example it holds: the same prompt asked again in the same context keeps the first answer."""
    return hashlib.sha256(f"{tenant}\0{context}\0{prompt}".encode()).hexdigest()[:32]


def admitted_id(tenant: str, prompt: str, instructions: str = "") -> str:
    """The id `Engine.admit` gives a pair: asked under `instructions` alone (no earlier turns)."""
    return example_id(tenant, context_key(instructions.strip(), (), {}), prompt.strip())


class Engine:
    """EchoLM's request path and recording path over injected ports."""

    def __init__(
        self,
        settings: EngineSettings,
        tiers: Sequence[TierProfile],
        *,
        embedder: Embedder,
        store: ExampleStore,
        tokens: TokenCounter,
        decisions: DecisionLog,
        stats: RouterStatsStore,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        quality: QualityCheck | None = None,
        load: LoadBoard | None = None,
        tier_tokens: Mapping[str, TokenCounter] | None = None,
    ) -> None:
        self.settings = settings
        self.tiers = sorted(tiers, key=lambda t: t.rank)
        self.strongest = self.tiers[-1].name
        self._by_name = {tier.name: tier for tier in self.tiers}
        self._strength = {
            tier.name: (tier.rank / (len(self.tiers) - 1) if len(self.tiers) > 1 else 1.0) for tier in self.tiers
        }
        self.embedder = embedder
        self.store = store
        # `tokens` counts for any tier without a counter of its own in `tier_tokens` (its own tokenizer).
        self.tokens = tokens
        self._tier_tokens = dict(tier_tokens or {})
        self.decisions = decisions
        self.stats = stats
        # This process's own count unless a board shared between workers is given (coordination.redis_url).
        self.load: LoadBoard = load or LoadTracker(settings.routing.load_window_s, settings.routing.load_stale_after_s)
        # Each tier's measured latency and cost per prompt token, for the `delay` load signal and `explain`
        # (this process's own answers).
        self.service = ServiceTimes(settings.routing.latency_prior_s)
        # Tiers whose calls just failed are left out of routing for a while (this process's own calls).
        self.health = TierHealth(settings.routing.failing_tier_cooldown_s, settings.routing.failing_tier_max_cooldown_s)
        self._now = clock or time.time
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # Per tenant: one tenant's feedback moves its own routing, never everyone's. The state holds the
        # sums over every worker; each worker re-reads them every routing.posterior_refresh_s.
        self._posteriors = _by_tenant(stats.load_posteriors())
        self._posteriors_read_at = self._now()
        # Taken around each write of evidence to the state and its copy here, and around each re-read: a
        # re-read then holds a score either in the state's counts or added to ours after it, never both.
        self._posteriors_io = threading.Lock()
        self._default_weights = settings.retrieval.weights.model_dump()
        self._weights = _weights_by_tenant(stats.load_weights() or {})
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        # The quality target (routing.quality_target): sampled cheap-tier answers move the strongest's bias.
        self.quality = quality
        # The reuse choice's offload model per tenant (routing.reuse).
        self.reuse = ReuseModels(settings.routing.reuse, stats.load_weights() or {})

    def warm_up(self) -> None:
        """Load the embedder, the tokenizer and the store's client now, so the first request does not pay.

        Opening the store (chromadb's import and client, about 0.9 s on 2 cores) goes through a tenant
        that holds nothing, which reads no tenant's data. The store first: one that is down fails the
        build at once, before seconds of loading the embedder.
        """
        self.store.count(_WARM_UP_TENANT)
        self.embedder.embed(["warm up"])
        for counter in {id(c): c for c in (self.tokens, *self._tier_tokens.values())}.values():
            counter.count("warm up")  # loads each tokenizer (a GGUF vocabulary, LiteLLM's choice) once

    def tokens_for(self, tier: str) -> TokenCounter:
        """What counts `tier`'s tokens: its own tokenizer where it has one."""
        return self._tier_tokens.get(tier, self.tokens)

    # ---- request path -------------------------------------------------------------------------

    def _routing_loads(self, sent_tokens: Mapping[str, int] | None) -> tuple[dict[str, float], dict[str, TierDelay]]:
        """The load each tier is routed on, and the delay the request would meet there (for `explain` and,
        with the `delay` signal, for routing); `sent_tokens`: the prompt tokens each would read."""
        routing = self.settings.routing
        names = [tier.name for tier in self.tiers]
        if routing.load_signal == "ema":  # the moving average counts those in flight without this one
            loads = self.load.loads()
            queues = {name: loads.get(name, 0.0) + 1.0 for name in names}
        else:
            queues = self.load.queue_if_added(names)
            loads = dict(queues)
        delays = expected_delays(self.tiers, queues, self.service, sent_tokens)
        if routing.load_signal == "delay":
            loads = {name: delay.charged(routing.latency_target_s) for name, delay in delays.items()}
        return loads, delays

    def _sent_tokens(
        self, tiers: Sequence[TierProfile], prompt_tokens: Callable[[str], int], chosen: Sequence[ScoredExample]
    ) -> dict[str, int] | None:
        """The prompt tokens each tier would read: the request's, and the examples' where the tier gets them.
        None where nothing reads them (no `delay` signal, no priced tier): a short prompt is then never
        tokenized at all (`_fitting_tiers` proves it fits by its bytes)."""
        if self.settings.routing.load_signal != "delay" and not any(t.prices.input_per_1k > 0 for t in tiers):
            return None
        shown = sum(item.tokens for item in chosen)
        return {tier.name: prompt_tokens(tier.name) + (0 if tier.name == self.strongest else shown) for tier in tiers}

    def _with_time_and_price(
        self, scores: Sequence[TierScore], delays: Mapping[str, TierDelay], sent_tokens: Mapping[str, int] | None
    ) -> list[TierScore]:
        """Each choice's expected seconds (wait and answer) and prompt price (`TierScore`)."""
        priced = []
        for score in scores:
            tier = self._by_name[score.tier]
            price = 0.0
            if sent_tokens is not None and tier.prices.input_per_1k > 0:  # an unpriced tier's prompt is free
                price = tier.prices.input_per_1k * sent_tokens[tier.name] / 1000
            seconds = delays[tier.name].total_s if tier.name in delays else 0.0
            priced.append(replace(score, expected_s=round(seconds, 3), prompt_usd=price))
        return priced

    def _prompt_tokens(self, view: RequestView) -> Callable[[str], int]:
        """The request's prompt tokens by each tier's tokenizer, each tokenizer counting at most once. A prompt
        too long to count cheaply is charged one token per character, a lower bound."""
        counted: dict[int, int] = {}

        def tokens(tier: str) -> int:
            if view.chars >= 200_000:
                return view.chars
            counter = self.tokens_for(tier)
            if id(counter) not in counted:
                counted[id(counter)] = counter.count(view.text)
            return counted[id(counter)]

        return tokens

    def prepare(self, request: ChatRequest) -> Prepared:
        """Decide the tier and the messages for one request; the decision is kept under a new id.

        A request with no tenant (no identity) reads and writes no cache unless `tenancy.shared` says
        such requests share one: then its tenant is SHARED_TENANT.
        """
        started = time.perf_counter()
        if not request.tenant and self.settings.tenancy.shared:
            request = replace(request, tenant=SHARED_TENANT)
        decision = self._new_decision(request)
        if not request.tenant:
            return self._pass_through(decision, request, "no tenant identity (tenancy.shared is off)", started)
        view = inspect_request(
            request,
            max_messages=self.settings.requests.max_messages,
            context_turns=self.settings.requests.query_context_turns,
        )
        if not is_valid_utf8(request.tenant):
            return self._pass_through(decision, request, "tenant id is not valid Unicode", started)
        requested = self._by_name.get(request.model)
        if requested is None:
            return self._pass_through(decision, request, f"model {request.model!r} is not an EchoLM tier", started)
        if not view.routable:
            return self._pass_through(decision, request, view.reason, started)
        params = judge_params(request.params, max_temperature=self.settings.admission.max_temperature)
        if params.pass_reason:
            return self._pass_through(decision, request, params.pass_reason, started)
        decision.context = context_key(view.instructions, view.history, params.shaping)
        decision.not_cached = params.not_cached_reason
        scrubbed = self._keep_question(decision, view)
        decision.history_turns = len(view.history)
        prompt_tokens = self._prompt_tokens(view)
        fitting = self._fitting_tiers(requested, view, prompt_tokens)
        eligible = [tier for tier in fitting if _allowed(tier.name, request)]
        if not eligible:
            return self._pass_through(decision, request, "prompt exceeds the requested tier's context", started)
        usable = self.health.usable(tier.name for tier in eligible)
        if usable and len(usable) < len(eligible):  # with none usable, route as if none were failing
            decision.left_out_failing = [tier.name for tier in eligible if tier.name not in usable]
            eligible = [tier for tier in eligible if tier.name in usable]

        vector, candidates = self._nearest(request.tenant, view.query, decision.context)
        decision.candidates_considered = len(candidates)
        decision.best_similarity = max((c.similarity for c in candidates), default=None)
        decision.similarity_shown = self.settings.requests.best_similarity_header
        reusable = self._reuse_estimate(request, decision, candidates, view.query)
        if (
            reusable is not None
            and reusable.probability >= self.settings.routing.reuse.min_probability
            and self._may_serve(request, decision, reusable)
        ):
            return self._serve_reused(request, decision, view, reusable, started)
        # Examples are chosen only for a request that a tier will answer: a reused one shows none.
        observed = self._observed(request.tenant)
        trial_tier = self._trial_tier(eligible)
        chosen = self._choose_examples(request.tenant, candidates, decision, observed, trial_tier)
        bucket = context_bucket(chosen)
        decision.bucket = bucket
        sent_tokens = self._sent_tokens(eligible, prompt_tokens, chosen)
        loads, delays = self._routing_loads(sent_tokens)
        scores = score_tiers(
            eligible,
            strongest=self.strongest,
            bucket=bucket,
            observed=observed,
            loads=loads,
            settings=self.settings.routing,
            rng=self._rng,
            strongest_bias=self.quality.strongest_bias() if self.quality is not None else 0.0,
        )
        scores = self._with_time_and_price(scores, delays, sent_tokens)
        best = choose_tier(scores)
        if decision.threshold_arm:  # the threshold's trial: both arms to the cheapest tier, whatever scored best
            best = next(score for score in scores if score.tier == trial_tier)
        if (
            reusable is not None
            and not decision.threshold_arm
            and self._stands_in(reusable, best, scores)
            and self._may_serve(request, decision, reusable)
        ):
            decision.scores = scores
            decision.bucket = bucket
            decision.reuse_stands_in_for = best.tier
            return self._serve_reused(request, decision, view, reusable, started)
        gets_examples = best.tier != self.strongest and bool(chosen)
        messages = self._augmented(request.messages, chosen if gets_examples else [])
        decision.action = "route"
        decision.reason = "routed"
        if decision.threshold_arm:
            decision.reason += "; in the utility threshold's trial, sent to the cheapest tier (retrieval.dynamic)"
        if decision.left_out_failing:
            decision.reason += f"; left out after failing: {', '.join(decision.left_out_failing)}"
        decision.tier = best.tier
        decision.augmentation = self.settings.augmentation.format if gets_examples else "none"
        decision.examples = [self._trace(item) for item in chosen] if gets_examples else []
        decision.example_tokens = sum(item.tokens for item in chosen) if gets_examples else 0
        decision.prompt_tokens = sent_tokens[best.tier] if sent_tokens is not None else 0
        decision.scores = scores
        if chosen and not gets_examples:
            decision.passed_over = [item.candidate.example.id for item in chosen]
        decision.overhead_ms = (time.perf_counter() - started) * 1000
        self.decisions.put(decision)
        if not scrubbed:  # else the example is embedded from the scrubbed text it will hold
            self._remember_vector(decision.request_id, vector)
        if best.tier != self.strongest and self.quality is not None:
            # Every trial request is compared: the threshold learns from its scores, and they are few.
            self.quality.sample(decision.request_id, request.messages, always=bool(decision.threshold_arm))
        # The request is in flight on its tier from here until `record` or `release` (the doors call one).
        self.load.begin(best.tier, decision.request_id)
        self.health.chosen(best.tier)
        return Prepared(decision=decision, tier=best.tier, messages=messages)

    def _reuse_estimate(
        self, request: ChatRequest, decision: Decision, candidates: Sequence[Candidate], query: str
    ) -> ReuseCandidate | None:
        """The nearest cached answer and its chance of being as good as the strongest's (kept in the decision),
        where the cache may answer this caller at all."""
        settings = self.settings.routing.reuse
        if not settings.enabled:
            return None
        if settings.model_group is not None and not _allowed(settings.model_group, request):
            return None  # a key limited to some models is served by those: never wider, not even by the cache
        estimate = self.reuse.estimate(request.tenant, candidates, query)
        if estimate is not None:
            decision.reuse_features = estimate.features
            decision.reuse_probability = round(estimate.probability, 4)
        return estimate

    def _may_serve(self, request: ChatRequest, decision: Decision, reusable: ReuseCandidate) -> bool:
        """Whether this request's parameters let the cached answer be served as it is (`why_not_reused`)."""
        answer_tokens = self.tokens_for(request.model).count(reusable.answer)
        return not why_not_reused(request.params, decision.not_cached, reusable.answer, answer_tokens)

    def _stands_in(self, reusable: ReuseCandidate, best: TierScore, scores: Sequence[TierScore]) -> bool:
        """Whether the cached answer is to be served in place of the cheaper tier the router chose (load sent
        the request there, or its examples): reuse is then an arm of the same router, its expected quality P
        times the strongest's, taken where that is at least the chosen tier's. It costs no inference and puts
        no load on any tier, so it wins a tie. Never in place of the strongest: it is as good only with P."""
        if not self.settings.routing.reuse.stand_in or best.tier == self.strongest:
            return False
        strongest = next((score for score in scores if score.tier == self.strongest), None)
        if strongest is None:  # the caller may not use the strongest: the reuse bar alone decided
            return False
        return reusable.probability * strongest.quality >= best.quality

    def _serve_reused(
        self, request: ChatRequest, decision: Decision, view: RequestView, reused: ReuseCandidate, started: float
    ) -> Prepared:
        """The request is answered from the cache: no tier is called and none carries its load."""
        settings = self.settings.routing.reuse
        decision.action = "reuse"
        if decision.reuse_stands_in_for:
            decision.reason = (
                f"the router sent it to {decision.reuse_stands_in_for}; the nearest cached answer stands in: as good"
                f" as {self.strongest}'s with P={reused.probability:.2f}, its expected quality"
                f" {reused.probability * _expected_quality(decision, self.strongest):.3f} is at least"
                f" {decision.reuse_stands_in_for}'s {_expected_quality(decision, decision.reuse_stands_in_for):.3f}"
                " (routing.reuse.stand_in)"
            )
        else:
            decision.reason = (
                f"the nearest cached answer is as good as {self.strongest}'s with P={reused.probability:.2f}"
                f" (reuse.min_probability {settings.min_probability:g})"
            )
        decision.tier = settings.model_group or request.model
        decision.reused_example = reused.candidate.example.id
        decision.overhead_ms = (time.perf_counter() - started) * 1000
        self.decisions.put(decision)
        if self.quality is not None:  # a sampled reuse is compared with the strongest's answer, like an offload
            self.quality.sample(decision.request_id, request.messages)
        # Counted as the model asked for would count them: the answer stands in for its answer.
        usage = (self._prompt_tokens(view)(request.model), self.tokens_for(request.model).count(reused.answer))
        return Prepared(
            decision=decision,
            tier=decision.tier,
            messages=_copied(request.messages),
            reused_answer=reused.answer,
            reused_usage=usage,
        )

    def examples_for(self, request: ChatRequest) -> tuple[list[Example], list[dict[str, Any]]]:
        """The examples retrieval picks for `request` among its tenant's, and the conversation a cheaper tier
        would be sent with them, whatever the router would choose. Writes nothing and puts no load on a tier
        (the lab's answers table records this choice for every request)."""
        _, _, chosen = self._retrieve(request.tenant, *self._query_and_context(request))
        return [item.candidate.example for item in chosen], self._augmented(request.messages, chosen)

    def candidates_for(self, request: ChatRequest) -> list[Candidate]:
        """The nearest examples retrieval finds for `request` under its context, before any is chosen to be
        shown. Writes nothing (the lab fits the router's offload model on them)."""
        _, candidates, _ = self._retrieve(request.tenant, *self._query_and_context(request))
        return candidates

    def _query_and_context(self, request: ChatRequest) -> tuple[str, str]:
        view = inspect_request(
            request,
            max_messages=self.settings.requests.max_messages,
            context_turns=self.settings.requests.query_context_turns,
        )
        params = judge_params(request.params, max_temperature=self.settings.admission.max_temperature)
        return view.query, context_key(view.instructions, view.history, params.shaping)

    def _retrieve(
        self, tenant: str, query: str, context: str
    ) -> tuple[list[float], list[Candidate], list[ScoredExample]]:
        """The query's vector, the nearest examples under its context, and those worth showing."""
        vector, candidates = self._nearest(tenant, query, context)
        return vector, candidates, self._examples_at_threshold(tenant, candidates)

    def _nearest(self, tenant: str, query: str, context: str) -> tuple[list[float], list[Candidate]]:
        """The query's vector and the nearest examples under its context."""
        vector = self.embedder.embed([query[:_EMBEDDED_CHARS]])[0]
        return vector, self.store.nearest(tenant, vector, self.settings.retrieval.candidates, context=context)

    def _augmented(self, messages: Sequence[Any], chosen: Sequence[ScoredExample]) -> list[dict[str, Any]]:
        if not chosen:
            return _copied(messages)
        return augment(
            messages,
            [item.candidate.example for item in chosen],
            fmt=self.settings.augmentation.format,
            max_answer_chars=self.settings.augmentation.max_answer_chars,
        )

    def bypass(self, request: ChatRequest) -> Prepared:
        """The caller asked us to stay out: the request goes out unchanged and is not recorded."""
        return self._pass_through(self._new_decision(request), request, "bypass requested", time.perf_counter())

    def fail_open(self, request: ChatRequest, reason: str) -> Prepared:
        """The request goes to the model it named, unchanged. Nothing is written: see `keep_quietly`."""
        decision = self._new_decision(request)
        decision.action = "fail_open"
        decision.reason = reason
        return Prepared(decision=decision, tier=request.model, messages=_copied(request.messages))

    def keep_quietly(self, decision: Decision) -> None:
        """Keep a decision for `explain` if the log works; the log itself may be what failed."""
        with contextlib.suppress(Exception):
            self.decisions.put(decision)

    async def aprepare(self, request: ChatRequest) -> Prepared:
        return await asyncio.to_thread(self.prepare, request)

    def tier_failed(self, tier: str) -> bool:
        """A call to `tier` failed for a reason of the tier's own (the doors judge the error): the router
        leaves it out for a while (routing.failing_tier_cooldown_s). True when this left it out (or out for
        longer), not when it was already out."""
        if tier not in self._by_name or not self.health.failed(tier):
            return False
        logger.warning("tier %s failed: left out of routing for %.0f s", tier, self.health.left_out().get(tier, 0.0))
        return True

    def release(self, request_id: str) -> None:
        """The request's tier no longer works on it (it failed, was cancelled or hung up): its load ends.

        `record` releases too; a second release, or one for a request never routed, does nothing.
        """
        self.load.finish(request_id)

    # ---- recording path -----------------------------------------------------------------------

    def record(self, outcome: Outcome) -> RecordResult:
        """Admit a strongest-tier answer as an example, or count a cheaper tier's use of its examples.

        The request's load ends first, whatever happens to the rest of the recording.
        """
        self.release(outcome.request_id)
        decision = self.decisions.get(outcome.request_id)
        if decision is None or decision.action not in ("route", "reuse"):
            return "skipped"
        if not self.decisions.mark_recorded(outcome.request_id, outcome.served_by):
            return "duplicate"
        if decision.action == "reuse":
            return self._record_reuse(decision, outcome)
        if outcome.served_by == decision.tier and self.health.answered(decision.tier):
            logger.warning("tier %s answered again: routed to again", decision.tier)
        whole = not why_not_whole(outcome)
        if whole and outcome.latency_s is not None:
            # The prompt it read is known only on the tier it was sent to (a fallback read another's).
            sent = decision.prompt_tokens if outcome.served_by == decision.tier and decision.prompt_tokens else None
            self.service.observe(outcome.served_by, outcome.latency_s, sent)
        if self.quality is not None and not (whole and outcome.served_by != self.strongest):
            self.quality.compare(outcome.request_id, outcome.answer, comparable=False)  # forget its sample
        now, alpha = self._now(), self.settings.upkeep.gain_alpha
        cost = self._cost_of(outcome.served_by)
        if outcome.served_by == self.strongest:
            if decision.passed_over:
                quality = self.settings.admission.initial_quality
                self.store.modify(
                    decision.tenant,
                    decision.passed_over,
                    lambda e: after_passed_over(e, quality=quality, served_cost=cost, now=now, alpha=alpha),
                )
            if not whole or decision.not_cached:
                return "skipped"
            return "admitted" if self._admit_from(decision, outcome) else "skipped"
        if decision.examples:
            # An answer that is not whole says the examples did not do their job; a whole one says only
            # that the request was served (evidence of quality comes from feedback).
            quality = _expected_quality(decision, outcome.served_by) if whole else 0.0
            self.store.modify(
                decision.tenant,
                [trace.id for trace in decision.examples],
                lambda e: after_cheap_use(e, quality=quality, served_cost=cost, alpha=alpha),
            )
        if self.quality is not None and whole:
            # After the use is counted: a comparison's score then corrects it as feedback would.
            self.quality.compare(
                outcome.request_id,
                outcome.answer,
                comparable=True,
                evidence=lambda score: self._compared(decision, outcome.served_by, score),
            )
        return "offload_counted" if decision.examples else "skipped"

    def _record_reuse(self, decision: Decision, outcome: Outcome) -> RecordResult:
        """A cached answer was served: it counts as a use of its example, and a sampled comparison with the
        strongest tier's answer is evidence for the tenant's reuse model."""
        self.store.modify(decision.tenant, [decision.reused_example], lambda e: replace(e, selected=e.selected + 1))
        if self.quality is not None:
            whole = not why_not_whole(outcome)
            self.quality.compare(
                outcome.request_id,
                outcome.answer,
                comparable=whole,
                evidence=lambda score: self._learn_reuse(decision.tenant, decision.reuse_features, score),
                # The bias decides between the tiers; a reused answer's quality is the reuse model's to learn.
                moves_bias=False,
            )
        return "reuse_counted"

    def _learn_reuse(self, tenant: str, features: Sequence[float], score: float) -> None:
        """Evidence for the tenant's reuse model, kept in the state so a restart starts from it."""
        stored = self.reuse.learn(tenant, features, score)
        if stored:
            self.stats.save_weights(stored)

    async def arecord(self, outcome: Outcome) -> RecordResult:
        return await asyncio.to_thread(self.record, outcome)

    def admit(
        self,
        tenant: str,
        prompt: str,
        answer: str,
        source_tier: str,
        instructions: str = "",
        *,
        admitted_by: str = "admit",
    ) -> bool:
        """Admit one (prompt, answer) pair directly, e.g. to warm a cache from known strong answers.

        `instructions`: the system message the answer was given under, if any: the pair then serves
        requests with that system message and no earlier turns. An example the store already holds for
        the prompt in that context is kept, not replaced (False).
        """
        context = context_key(instructions.strip(), (), {})  # as `admitted_id` computes it
        return self._admit(
            tenant, prompt, answer, source_tier, None, instructions, context=context, admitted_by=admitted_by
        )

    def feedback(self, request_id: str, score: float, *, tenant: str) -> None:
        """A quality score (0-1) for a past response of `tenant`: updates the router and the examples it used.

        Each response is scored at most once (marked before the updates): a repeat raises
        FeedbackAlreadyGiven rather than counting the same response twice. Another tenant's request id
        is unknown to the caller, exactly as one that never existed.
        """
        if not 0.0 <= score <= 1.0:
            raise ValueError("score must lie in [0, 1]")
        decision = self.decisions.get(request_id)
        if decision is None or decision.action not in ("route", "reuse") or decision.tenant != tenant:
            raise UnknownRequest(f"no routed decision with request id {request_id!r}")
        if not self.decisions.mark_feedback(request_id, score):
            raise FeedbackAlreadyGiven(f"request {request_id!r} already has feedback; it counts once")
        if decision.action == "reuse":
            self._learn_reuse(tenant, decision.reuse_features, score)
            return
        strongest = decision.tier == self.strongest
        self._observe_quality(tenant, decision.tier, decision.bucket, score)
        if not strongest:
            self._observe_threshold(decision, score)
        if strongest:
            # The answer this request admitted, if it was the one kept, is only as good as the feedback says.
            key = example_id(decision.tenant, decision.context, decision.query.strip())
            self.store.modify(
                decision.tenant, [key], lambda e: replace(e, quality=score) if e.origin == request_id else e
            )
            return
        if decision.examples:
            # The use was counted as a success when it completed; the feedback corrects that guess.
            now, alpha, cost = self._now(), self.settings.upkeep.gain_alpha, self._cost_of(decision.tier)
            expected = _expected_quality(decision, decision.tier)
            self.store.modify(
                decision.tenant,
                [trace.id for trace in decision.examples],
                lambda e: after_feedback(
                    e,
                    score=score,
                    assumed_quality=expected,
                    served_cost=cost,
                    now=now,
                    alpha=alpha,
                ),
            )
            with self._lock:
                weights = self._weights.get(decision.tenant, self._default_weights)
                for trace in decision.examples:
                    weights = selection.fit_step(weights, trace.features, score, self.settings.retrieval.learning_rate)
                self._weights[decision.tenant] = weights
            self.stats.save_weights({f"{name}|{decision.tenant}": value for name, value in weights.items()})

    def _observed(self, tenant: str) -> dict[tuple[str, str], tuple[float, float]]:
        """The tenant's evidence per (tier, bucket), re-read from the state once it is older than
        routing.posterior_refresh_s: the counts there are every worker's, added atomically, so the read
        replaces ours whole."""
        now = self._now()
        with self._lock:
            stale = now - self._posteriors_read_at >= self.settings.routing.posterior_refresh_s
            if stale:
                self._posteriors_read_at = now  # one request re-reads; the others route on what is here
        if stale:
            with self._posteriors_io:
                fresh = _by_tenant(self.stats.load_posteriors())
                with self._lock:
                    self._posteriors = fresh
        with self._lock:
            return dict(self._posteriors.get(tenant, {}))

    def _observe_quality(self, tenant: str, tier: str, bucket: str, score: float) -> None:
        """One score (0-1) for an answer of `tier` in context `bucket`: the tenant's posterior moves, kept."""
        self._add_evidence(tenant, tier, tier_bucket(bucket, strongest=tier == self.strongest), score)

    def _observe_threshold(self, decision: Decision, score: float) -> None:
        """A cheaper tier's answer to a request in the band explored below its tenant's threshold was scored:
        evidence for that band's arm (`core.example_threshold`)."""
        if decision.threshold_band is None or decision.threshold_arm not in ("shown", "hidden"):
            return
        arm: Arm = "shown" if decision.threshold_arm == "shown" else "hidden"
        self._add_evidence(decision.tenant, EVIDENCE_TIER, evidence_bucket(decision.threshold_band, arm), score)

    def _add_evidence(self, tenant: str, tier: str, bucket: str, score: float) -> None:
        with self._posteriors_io:
            self.stats.add_to_posterior(tier, tenant_bucket(bucket, tenant), score, 1.0 - score)
            with self._lock:
                observed = self._posteriors.setdefault(tenant, {})
                successes, failures = observed.get((tier, bucket), (0.0, 0.0))
                observed[(tier, bucket)] = (successes + score, failures + 1.0 - score)

    def _compared(self, decision: Decision, served_by: str, score: float) -> None:
        """A shadow comparison scored a cheaper tier's answer (0-1) against the strongest's: evidence for the
        router's posterior of that tier in the request's context bucket (so it learns where the cheap tier
        falls short, e.g. a bucket whose answers rarely agree with the strongest's), and for the examples it
        used, as feedback is. It does not move the utility weights; the caller's own feedback on the request
        is still taken, as a second piece of evidence."""
        if served_by != decision.tier:  # a fallback answered: the comparison says nothing of the chosen tier
            return
        self._observe_quality(decision.tenant, served_by, decision.bucket, score)
        self._observe_threshold(decision, score)
        if not decision.examples:
            return
        now, alpha, cost = self._now(), self.settings.upkeep.gain_alpha, self._cost_of(served_by)
        expected = _expected_quality(decision, served_by)
        self.store.modify(
            decision.tenant,
            [trace.id for trace in decision.examples],
            lambda e: after_feedback(e, score=score, assumed_quality=expected, served_cost=cost, now=now, alpha=alpha),
        )

    def explain(self, request_id: str) -> Decision:
        decision = self.decisions.get(request_id)
        if decision is None:
            raise UnknownRequest(f"no decision with request id {request_id!r}")
        return decision

    def _cost_of(self, tier: str) -> float:
        """A tier's relative cost (the strongest's when the tier is unknown, e.g. renamed since)."""
        profile = self._by_name.get(tier)
        return profile.cost if profile is not None else 1.0

    def utility_weights(self, tenant: str) -> dict[str, float]:
        """The example-utility weights of `tenant`: fitted to its own feedback, the configured ones before."""
        with self._lock:
            return dict(self._weights.get(tenant, self._default_weights))

    # ---- internals ----------------------------------------------------------------------------

    def _new_decision(self, request: ChatRequest) -> Decision:
        return Decision(
            request_id=uuid.uuid4().hex,
            # A lone surrogate cannot be stored; such a tenant's requests pass through (see `prepare`).
            tenant=request.tenant.encode("utf-8", "backslashreplace").decode("utf-8"),
            created_at=self._now(),
            requested_model=request.model,
            action="pass_through",
            reason="",
            tier=request.model,
            caller=request.caller,
        )

    def _pass_through(self, decision: Decision, request: ChatRequest, reason: str, started: float) -> Prepared:
        decision.action = "pass_through"
        decision.reason = reason
        decision.overhead_ms = (time.perf_counter() - started) * 1000
        self.decisions.put(decision)
        return Prepared(decision=decision, tier=request.model, messages=_copied(request.messages))

    def _fitting_tiers(
        self, requested: TierProfile, view: RequestView, prompt_tokens: Callable[[str], int]
    ) -> list[TierProfile]:
        """Tiers no dearer than the one named whose context window holds the prompt and the examples."""
        budget = self.settings.retrieval.max_example_tokens
        affordable = [tier for tier in self.tiers if tier.rank <= requested.rank]
        smallest = min(tier.max_input_tokens for tier in affordable)
        # Tokens never outnumber UTF-8 bytes (at most 4 per character), so most prompts skip counting;
        # a prompt too long to count cheaply is charged one token per character, a lower bound.
        if view.chars * 4 + budget < smallest:
            return affordable
        return [tier for tier in affordable if prompt_tokens(tier.name) + budget <= tier.max_input_tokens]

    def _examples_at_threshold(self, tenant: str, candidates: Sequence[Candidate]) -> list[ScoredExample]:
        """The examples a request of `tenant` with these candidates is shown at the tenant's threshold, without
        exploring below it (what `examples_for` reports)."""
        retrieval = self.settings.retrieval
        bar = tenant_threshold(retrieval.threshold, retrieval.dynamic, self._observed(tenant))
        return self._select(self._scored(tenant, candidates), bar.bar)

    def _choose_examples(
        self,
        tenant: str,
        candidates: Sequence[Candidate],
        decision: Decision,
        observed: Mapping[tuple[str, str], tuple[float, float]],
        trial_tier: str | None,
    ) -> list[ScoredExample]:
        """The examples shown at the tenant's threshold (`core.example_threshold`). A request whose best lies in
        the band just below it joins the trial with probability 2 x `explore_share` (one arm shown the band's
        examples, the other not; the caller sends both to `trial_tier`), where there is a cheaper tier to try."""
        retrieval = self.settings.retrieval
        scored = self._scored(tenant, candidates)
        bar = tenant_threshold(retrieval.threshold, retrieval.dynamic, observed)
        decision.threshold = bar.bar
        chosen = self._select(scored, bar.bar)
        band = bar.explored
        if chosen or band is None or trial_tier is None or not self._gathers_evidence(observed):
            return chosen
        in_band = self._select(scored, band.low)  # decided before the draw, so both arms hold alike requests
        if not in_band:
            return chosen
        draw, share = self._rng.random(), retrieval.dynamic.explore_share
        if draw >= 2 * share:
            return chosen  # not in the trial: routed as usual, at the tenant's bar
        arm: Arm = "shown" if draw < share else "hidden"
        decision.threshold_band, decision.threshold_arm = band.low, arm
        return in_band if arm == "shown" else chosen

    def _trial_tier(self, eligible: Sequence[TierProfile]) -> str | None:
        """The tier the threshold's trial sends both arms to: the cheapest this request may use, if it is not
        the strongest (whose answers read no example, so they could not tell the arms apart)."""
        cheapest = eligible[0].name
        return cheapest if cheapest != self.strongest else None

    def _gathers_evidence(self, observed: Mapping[tuple[str, str], tuple[float, float]]) -> bool:
        """Whether scores come in for this tenant (a quality target compares, or it has given feedback):
        exploring where no arm would ever be scored would cost quality and teach nothing."""
        if self.quality is not None:
            return True
        return any(tier != EVIDENCE_TIER and s + f > 0 for (tier, _), (s, f) in observed.items())

    def _scored(self, tenant: str, candidates: Sequence[Candidate]) -> list[ScoredExample]:
        retrieval = self.settings.retrieval
        now = self._now()
        weights = self.utility_weights(tenant)
        scored = []
        for candidate in candidates:
            if candidate.example.quality < self.settings.admission.min_quality:
                continue  # feedback sank this answer below the bar: never show it again
            features = selection.utility_features(
                candidate, now=now, tier_strength=self._strength, half_life_days=retrieval.age_half_life_days
            )
            scored.append(ScoredExample(candidate, selection.utility(features, weights), features))
        return scored

    def _select(self, scored: Sequence[ScoredExample], threshold: float) -> list[ScoredExample]:
        retrieval = self.settings.retrieval
        return selection.select_examples(
            scored,
            k=retrieval.k,
            threshold=threshold,
            token_budget=retrieval.max_example_tokens,
            near_duplicate_similarity=retrieval.near_duplicate_similarity,
            alone_at=retrieval.one_example_similarity,
            # Examples are shown to the tiers below the strongest: counted as the cheapest reads them.
            count_tokens=lambda item: self.tokens_for(self.tiers[0].name).count(
                item.candidate.example.prompt + "\n" + item.candidate.example.answer
            ),
            acceptable=self._safe_to_show,
        )

    def _safe_to_show(self, item: ScoredExample) -> bool:
        """False for an example that reads like instructions to a model: cached before the screen, or written
        by hand. The fence alone did not stop a 0.5B cheap tier from obeying "reply only with PWNED"
        (tests/integration/test_proxy_tenants.py). Asked of the few examples about to be shown: the regexes
        over a long answer cost milliseconds, and 20 long candidates cost 30 ms a request."""
        if not self.settings.admission.refuse_instructions:
            return True
        example = item.candidate.example
        return not (looks_like_instructions(example.answer) or looks_like_injection(example.prompt))

    @staticmethod
    def _trace(item: ScoredExample) -> ExampleTrace:
        example = item.candidate.example
        return ExampleTrace(
            id=example.id,
            prompt=example.prompt,
            similarity=item.candidate.similarity,
            utility=item.utility,
            features=dict(item.features),
            tokens=item.tokens,
        )

    def answer_to_keep(self, answer: str) -> str | None:
        """An answer as the cache would hold it (scrubbed), or None where admission refuses it.

        Every write of an answer goes through here: a live request's admission and the upkeep's replays.
        """
        admission = self.settings.admission
        answer = answer.strip()
        if not answer or not is_valid_utf8(answer):
            return None
        if admission.refuse_instructions and looks_like_instructions(answer):
            return None
        if not admission.min_answer_chars <= len(answer) <= admission.max_answer_chars:
            return None
        if admission.pii != "keep":
            scrubbed = scrub(answer)
            if scrubbed.found and admission.pii == "refuse":
                return None
            answer = scrubbed.text
        return answer

    def _keep_question(self, decision: Decision, view: RequestView) -> bool:
        """Put in the decision the question and system prompt it keeps (and an answer would be cached
        under): cut at `requests.max_kept_chars`, scrubbed when `admission.pii` is not `keep`, so the state
        database holds no more personal data than the cache would. True when scrubbing changed them."""
        keep = self.settings.requests.max_kept_chars
        if not decision.not_cached and max(len(view.query), len(view.instructions)) > keep:
            decision.not_cached = "prompt longer than requests.max_kept_chars: not kept whole"
        # Scrubbed whole, then cut: a cut first could split a secret and keep its first half unscrubbed.
        # The scrubber is linear (about 40 ms for 200k characters, as long as counting its tokens takes).
        query, instructions = view.query, view.instructions
        pii = self.settings.admission.pii
        found = False
        if pii != "keep":
            texts = [scrub(text) for text in (query, instructions)]
            found = any(text.found for text in texts)
            if found:
                query, instructions = (text.text for text in texts)
                if pii == "refuse" and not decision.not_cached:
                    decision.not_cached = "personal data in the prompt (admission.pii: refuse)"
        decision.query, decision.instructions = query[:keep], instructions[:keep]
        return found

    def _remember_vector(self, request_id: str, vector: list[float]) -> None:
        with self._lock:
            self._vectors[request_id] = vector
            while len(self._vectors) > _QUERY_VECTOR_CACHE:
                self._vectors.popitem(last=False)

    def _admit_from(self, decision: Decision, outcome: Outcome) -> bool:
        with self._lock:
            vector = self._vectors.pop(decision.request_id, None)
        return self._admit(
            decision.tenant,
            decision.query,
            outcome.answer,
            outcome.served_by,
            vector,
            decision.instructions,
            context=decision.context,
            admitted_by=decision.caller or "anonymous",
            origin=decision.request_id,
        )

    def _admit(
        self,
        tenant: str,
        prompt: str,
        answer: str,
        source_tier: str,
        vector: list[float] | None,
        instructions: str,
        *,
        context: str,
        admitted_by: str,
        origin: str = "",
    ) -> bool:
        admission = self.settings.admission
        prompt = prompt.strip()
        if not prompt or len(prompt) > admission.max_prompt_chars:
            return False
        if not all(is_valid_utf8(text) for text in (prompt, instructions)):
            return False  # a lone surrogate cannot be embedded or stored
        if admission.refuse_instructions and looks_like_injection(prompt):
            return False  # the question is shown to later requests as much as the answer is
        if admission.initial_quality < admission.min_quality:
            return False
        kept_answer = self.answer_to_keep(answer)
        if kept_answer is None:
            return False
        answer = kept_answer
        # The id stays that of the prompt as asked: feedback and replay find the example by it.
        key = example_id(tenant, context, prompt)
        if admission.pii != "keep":
            texts = [scrub(text) for text in (prompt, instructions)]
            if any(text.found for text in texts):
                if admission.pii == "refuse":
                    return False
                prompt, instructions = (text.text for text in texts)
                vector = None  # embed what is stored, not what was scrubbed away
        if vector is None:
            vector = self.embedder.embed([prompt])[0]
        example = Example(
            id=key,
            prompt=prompt,
            answer=answer,
            source_tier=source_tier,
            quality=admission.initial_quality,
            created_at=self._now(),
            instructions=instructions.strip(),
            context=context,
            admitted_by=admitted_by,
            origin=origin,
        )
        # Never over another's example: a prompt asked again in the same context keeps the first answer.
        return self.store.add(tenant, [example], [vector]) == 1
