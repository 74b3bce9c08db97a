"""Holding a quality target on live traffic: shadow comparisons move the router's operating point.

A small share of the requests the router sends to a cheaper tier are also sent, after the response, to
the strongest tier; the two answers are compared (1 = the cheap answer is as good, 0 = it is not).
The router adds `bias` to the strongest tier's score. Each comparison moves it by
step × (target − score): a stochastic-approximation (Robbins-Monro) controller whose fixed point is
the operating point where the expected comparison score equals the target. Below the target, more
requests go to the strongest tier; above it, the slack is spent on offload.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetState:
    """What the controller knows: the bias it applies and the comparisons behind it."""

    target: float
    bias: float
    comparisons: int
    recent_score: float | None  # moving average of the comparison scores (None before the first)


class QualityTarget:
    """Thread-safe controller of the strongest tier's score bias; decisions read it, comparisons move it."""

    def __init__(
        self,
        target: float,
        *,
        step: float,
        max_bias: float,
        sample_share: float,
        bias: float = 0.0,
        comparisons: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= target <= 1.0:
            raise ValueError("the quality target lies in [0, 1]")
        self._target = target
        self._step = step
        self._max_bias = max_bias
        self._sample_share = sample_share
        self._bias = max(-max_bias, min(max_bias, bias))
        self._comparisons = comparisons
        self._recent: float | None = None
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    @property
    def bias(self) -> float:
        with self._lock:
            return self._bias

    def should_compare(self) -> bool:
        """Whether this cheap-tier response is one of the sampled share compared with the strongest tier."""
        with self._lock:
            return self._rng.random() < self._sample_share

    def observe(self, score: float) -> float:
        """One comparison (0-1, the cheap answer against the strongest's): returns the new bias."""
        if not 0.0 <= score <= 1.0:
            raise ValueError("a comparison score lies in [0, 1]")
        with self._lock:
            self._bias = max(-self._max_bias, min(self._max_bias, self._bias + self._step * (self._target - score)))
            self._comparisons += 1
            # A window of about 20 comparisons: what `explain` and the metrics show as the current level.
            self._recent = score if self._recent is None else self._recent + 0.05 * (score - self._recent)
            return self._bias

    def state(self) -> TargetState:
        with self._lock:
            return TargetState(self._target, self._bias, self._comparisons, self._recent)
