"""How long a tier takes to answer a request, learned online from its own answers (this process only).

What the `delay` load signal charges a choice: the queue ahead of it at the tier's typical latency, plus
this request's own service time. The own time is predicted from the request's prompt tokens, the examples
included where the tier gets them: on a CPU a prompt is read at a cost per token (on this project's tiers
about 18 ms for the 0.5B model, 43 ms for the 1.5B), so two examples can make the cheap tier slower than
the strong one without them. Per tier it keeps moving averages (step `alpha`) of the latency, of the
prompt tokens and of their covariance, and predicts

    seconds(prompt tokens) = mean latency + slope · (prompt tokens − mean prompt tokens)

with slope = cov / (var + ridge): the seconds one more prompt token has cost on that tier. Where prompts
have not varied (every request alike, or none timed yet) the ridge keeps the slope near 0 and the
prediction is the mean latency. The slope is the marginal cost of a token, not the average: a server that
keeps a shared system prompt in its prefix cache reads it for free, and only what differs costs. A latency
measured under load includes the wait in the tier's own queue, so a busy tier looks slower still: the
signal errs toward the idle tier.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

# Token² of variance that counts as much as one observed: below about 10 tokens of spread the slope stays
# near 0 rather than fitting noise (a 3-token difference that happened to take 1 s longer).
_RIDGE_TOKENS2 = 100.0
# A prediction never falls below this share of the tier's mean latency (a slope fitted on long prompts
# extrapolated to a short one would otherwise reach 0 or below).
_FLOOR_SHARE = 0.25


@dataclass
class _Moments:
    latency: float
    tokens: float = 0.0
    variance: float = 0.0
    covariance: float = 0.0
    timed_tokens: bool = False


class ServiceTimes:
    """Each tier's latency per whole answer, and its cost per prompt token, as moving averages."""

    def __init__(self, prior_s: float, alpha: float = 0.1) -> None:
        self._prior_s = prior_s
        self._alpha = alpha
        self._tiers: dict[str, _Moments] = {}
        self._lock = threading.Lock()

    def observe(self, tier: str, seconds: float, prompt_tokens: int | None = None) -> None:
        """One whole answer took `seconds`; `prompt_tokens`, if known, is what the tier was sent."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        with self._lock:
            moments = self._tiers.get(tier)
            if moments is None:
                self._tiers[tier] = _Moments(seconds, float(prompt_tokens or 0), timed_tokens=prompt_tokens is not None)
                return
            a = self._alpha
            if prompt_tokens is not None and prompt_tokens >= 0:
                if not moments.timed_tokens:  # the first with a token count: its mean starts here
                    moments.tokens, moments.timed_tokens = float(prompt_tokens), True
                # Exponentially weighted mean, variance and covariance (West's incremental form).
                token_step, latency_step = prompt_tokens - moments.tokens, seconds - moments.latency
                moments.tokens += a * token_step
                moments.variance = (1 - a) * (moments.variance + a * token_step * token_step)
                moments.covariance = (1 - a) * (moments.covariance + a * token_step * latency_step)
            moments.latency += a * (seconds - moments.latency)

    def estimate(self, tier: str) -> float:
        """The tier's mean latency per answer (the prior until it has been timed)."""
        with self._lock:
            moments = self._tiers.get(tier)
            return self._prior_s if moments is None else moments.latency

    def seconds_per_token(self, tier: str) -> float:
        """What one more prompt token has cost on the tier (0 until prompts of different lengths are timed)."""
        with self._lock:
            moments = self._tiers.get(tier)
            return 0.0 if moments is None else _slope(moments)

    def predict(self, tier: str, prompt_tokens: int | None) -> float:
        """Seconds the tier would take to answer a request of `prompt_tokens` (None: its mean latency)."""
        with self._lock:
            moments = self._tiers.get(tier)
            if moments is None:
                return self._prior_s
            if prompt_tokens is None or not moments.timed_tokens:
                return moments.latency
            predicted = moments.latency + _slope(moments) * (prompt_tokens - moments.tokens)
            return max(_FLOOR_SHARE * moments.latency, predicted)


def _slope(moments: _Moments) -> float:
    # A negative slope (longer prompts answered faster) is noise or a shorter answer, not a rule.
    return max(0.0, moments.covariance / (moments.variance + _RIDGE_TOKENS2))
