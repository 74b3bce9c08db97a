"""Tier choice: S_i = μ_i − w·C_i − load bias_i over any number of tiers.

μ_i is the posterior mean (or a Thompson draw) of a Beta per tier and context bucket; the context is
the quality of the examples found for this request (DESIGN.md §2.5). L_i is, by default, the queue the
request would join (requests in flight on the tier, counting this one), or the moving average of the
in-flight count (`routing.load_signal`). With those the load bias is λ0·tanh(γ·(L_i − cap_i))⁺·C_i: zero up
to capacity, then growing with the excess and with the tier's cost, so load shifts to cheap tiers. With
`load_signal: delay`, L_i is the seconds of delay the request is charged on the tier (`TierDelay.charged`: the
wait behind the requests ahead of it at the tier's measured latency, over its capacity, plus its own answer's
time beyond latency_target_s, predicted from its prompt tokens with the examples it would get:
`core.service_time`) and the bias is λ0·L_i/latency_target_s whatever the tier costs: an idle tier attracts
work and a queued one sheds it, the expensive one included, while a slow but idle tier keeps the requests
its quality earns. Under either signal the bias is at most `max_load_penalty`: load sheds the requests
whose predicted loss on a cheaper tier is smaller than that, never the ones that would lose more.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from echolm_middleware.config import RoutingSettings
from echolm_middleware.core.service_time import ServiceTimes
from echolm_middleware.core.types import ScoredExample, TierScore

# Context buckets by the best example's utility, each with the utility it stands for in the prior.
_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("high", 0.85, 0.925),
    ("mid", 0.7, 0.775),
    ("low", 0.0, 0.6),
)
NO_EXAMPLES = "none"
STRONGEST_BUCKET = "any"


@dataclass(frozen=True)
class TokenPrices:
    """USD per 1k prompt and completion tokens; `overridden`: set in echolm's config rather than taken from
    LiteLLM (then our figures use it even where LiteLLM logs another cost)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0
    overridden: bool = False

    @property
    def blended_per_1k(self) -> float:
        return (self.input_per_1k + self.output_per_1k) / 2

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (self.input_per_1k * prompt_tokens + self.output_per_1k * completion_tokens) / 1000


@dataclass(frozen=True)
class TierProfile:
    """A tier as the router sees it: relative cost in [0, 1], capacity and prior quality."""

    name: str
    rank: int
    cost: float
    capacity: float
    quality_prior: float
    max_input_tokens: int
    prices: TokenPrices = TokenPrices()  # for the cost-saved metric and the bench's cost per request

    @property
    def price_per_1k(self) -> float:
        return self.prices.blended_per_1k


def context_bucket(examples: Sequence[ScoredExample]) -> str:
    """The bucket of a request's context: how good its best example is."""
    if not examples:
        return NO_EXAMPLES
    best = max(example.utility for example in examples)
    return next(name for name, floor, _ in _BUCKETS if best >= floor)


def prior_mean(tier: TierProfile, bucket: str, *, strongest: bool, uplift: float) -> float:
    """Prior quality: examples close part of a cheaper tier's gap (the EchoLM effect); none for the strongest."""
    if strongest or bucket in (NO_EXAMPLES, STRONGEST_BUCKET):
        return tier.quality_prior
    strength = next(mid for name, _, mid in _BUCKETS if name == bucket)
    return tier.quality_prior + (1.0 - tier.quality_prior) * uplift * strength


def tier_bucket(bucket: str, *, strongest: bool) -> str:
    """The strongest tier gets no examples, so one posterior serves all its contexts."""
    return STRONGEST_BUCKET if strongest else bucket


def score_tiers(
    tiers: Sequence[TierProfile],
    *,
    strongest: str,
    bucket: str,
    observed: Mapping[tuple[str, str], tuple[float, float]],
    loads: Mapping[str, float],
    settings: RoutingSettings,
    rng: random.Random,
    strongest_bias: float = 0.0,
) -> list[TierScore]:
    """Score every eligible tier for one request; `strongest_bias` is the quality target's correction."""
    scores = []
    for tier in tiers:
        is_strongest = tier.name == strongest
        key_bucket = tier_bucket(bucket, strongest=is_strongest)
        mean = prior_mean(tier, key_bucket, strongest=is_strongest, uplift=settings.example_uplift)
        successes, failures = observed.get((tier.name, key_bucket), (0.0, 0.0))
        alpha = mean * settings.prior_strength + successes
        beta = (1.0 - mean) * settings.prior_strength + failures
        quality = rng.betavariate(alpha, beta) if settings.policy == "thompson" else alpha / (alpha + beta)
        load = loads.get(tier.name, 0.0)
        cost_penalty = settings.cost_weight * tier.cost
        if settings.load_signal == "delay":  # seconds of expected delay, whatever the tier costs
            load_penalty = settings.load_lambda * load / settings.latency_target_s
        else:
            excess = max(0.0, load - tier.capacity)
            load_penalty = settings.load_lambda * math.tanh(settings.load_gamma * excess) * tier.cost
        capped = load_penalty > settings.max_load_penalty
        load_penalty = min(load_penalty, settings.max_load_penalty)
        bias = strongest_bias if is_strongest else 0.0
        scores.append(
            TierScore(
                tier=tier.name,
                quality=quality,
                alpha=alpha,
                beta=beta,
                cost=tier.cost,
                load=load,
                capacity=settings.latency_target_s if settings.load_signal == "delay" else tier.capacity,
                cost_penalty=cost_penalty,
                load_penalty=load_penalty,
                score=quality - cost_penalty - load_penalty + bias,
                target_bias=bias,
                load_signal=settings.load_signal,
                load_penalty_capped=capped,
            )
        )
    return scores


def choose_tier(scores: Sequence[TierScore]) -> TierScore:
    """Argmax of the score; a tie goes to the cheaper tier."""
    return max(scores, key=lambda s: (round(s.score, 9), -s.cost))


@dataclass(frozen=True)
class TierDelay:
    """The seconds a request would take on a tier: the wait behind the requests ahead of it, then its answer."""

    wait_s: float
    answer_s: float

    @property
    def total_s(self) -> float:
        return self.wait_s + self.answer_s

    def charged(self, target_s: float) -> float:
        """The seconds the router charges: the wait, and the answer's own time only beyond `target_s`.

        The wait is what load adds; an idle tier's answer time is the tier itself. Charging it in full sent
        requests without examples from an idle strong tier that answers in 8 s to an idle cheap one that
        answers in 1 s (at the defaults), trading quality for seconds no one was short of; within the target
        it costs nothing.
        """
        return self.wait_s + max(0.0, self.answer_s - target_s)


def expected_delays(
    tiers: Sequence[TierProfile],
    queues: Mapping[str, float],
    service: ServiceTimes,
    prompt_tokens: Mapping[str, int] | None = None,
) -> dict[str, TierDelay]:
    """The delay a request would meet on each tier: the requests ahead of it (its queue less itself) at the
    tier's mean latency, shared among its `capacity` slots, then its own answer, predicted from the prompt
    tokens the tier would read (`prompt_tokens`, examples included where it gets them; else its mean)."""
    tokens = prompt_tokens or {}
    return {
        tier.name: TierDelay(
            wait_s=max(0.0, queues.get(tier.name, 1.0) - 1.0) * service.estimate(tier.name) / tier.capacity,
            answer_s=service.predict(tier.name, tokens.get(tier.name)),
        )
        for tier in tiers
    }


class LoadTracker:
    """Per-tier in-flight requests and their exponential moving average over time (this process only).

    The average follows the in-flight count with time constant `window_s`: a burst raises it in
    proportion to its length, and an idle tier decays back to zero. Requests are tracked by key, so
    one whose end is never reported (a client that vanished mid-stream) stops counting after
    `stale_after_s` instead of holding the tier "busy" for ever.
    """

    def __init__(
        self, window_s: float, stale_after_s: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._open: dict[str, tuple[str, float]] = {}
        self._ema: dict[str, float] = {}
        self._updated: dict[str, float] = {}
        self._lock = threading.Lock()

    def _counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self._ema, 0)
        for tier, _ in self._open.values():
            counts[tier] = counts.get(tier, 0) + 1
        return counts

    def _advance(self, now: float) -> None:
        for key, (_, started) in list(self._open.items()):
            if now - started > self._stale_after_s:
                del self._open[key]
        for tier, current in self._counts().items():
            elapsed = now - self._updated.get(tier, now)
            self._ema[tier] = current + (self._ema.get(tier, 0.0) - current) * math.exp(-elapsed / self._window_s)
            self._updated[tier] = now

    def begin(self, tier: str, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._open[key] = (tier, now)
            self._ema.setdefault(tier, 0.0)
            self._updated.setdefault(tier, now)

    def finish(self, key: str) -> str | None:
        """The request `key` ended: the tier it was on, or None for an unknown, stale or finished key."""
        with self._lock:
            self._advance(self._clock())
            opened = self._open.pop(key, None)
        return None if opened is None else opened[0]

    def queue_if_added(self, tiers: Sequence[str]) -> dict[str, float]:
        """Requests each tier would have in flight if this one went there: the queue it would join.

        Against a capacity of concurrent slots this says at once whether the request would wait, where
        the moving average lags a burst by its window and keeps a tier "busy" after it has drained.
        """
        with self._lock:
            self._advance(self._clock())
            counts = self._counts()
        return {tier: counts.get(tier, 0) + 1.0 for tier in tiers}

    def loads(self) -> dict[str, float]:
        with self._lock:
            self._advance(self._clock())
            return dict(self._ema)

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return self._counts()
