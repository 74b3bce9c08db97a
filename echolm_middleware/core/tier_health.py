"""Which tiers are failing: a tier whose call just failed is left out of routing for a while.

LiteLLM's Router cools a failing deployment down only where its group has another deployment to send the
call to, and each of our tiers is often one server. Without this, every request routed to a tier that is
down (a server killed, a provider's outage) pays the Router's retries and then the fallback to the model
it named, about 6 s on the local tiers, before it is answered. With it, the first failure leaves the tier
out for `cooldown_s`; then the next request the router sends there tries it (the others keep away from it
for another `cooldown_s`): an answer brings the tier back, a failure leaves it out for twice as long as before,
up to `max_cooldown_s`. Failures that arrive while the tier is already out (the other requests it had in
flight when it went down) keep it out without lengthening its time out.

Each worker learns this from its own requests: a dead server is found by the first request each worker
sends it, which costs less than sharing the state would (a Redis call on every request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Out:
    failures: int  # failed tries in a row, the first failure included
    back_at: float  # when the tier may be tried again
    trying: bool = False  # one request was let through to try it and has not come back


class TierHealth:
    """The tiers left out of routing after failing (thread-safe: routing and recording run on threads)."""

    def __init__(self, cooldown_s: float, max_cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self._out: dict[str, _Out] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cooldown_s > 0

    def failed(self, tier: str) -> bool:
        """A call to `tier` failed for a reason of the tier's own (not the caller's). True when this left
        it out, or out for longer: a first failure, or the failure of the request let through to try it."""
        if not self.enabled:
            return False
        with self._lock:
            now = self._clock()
            out = self._out.get(tier)
            if out is None:
                self._out[tier] = _Out(failures=1, back_at=now + self.cooldown_s)
                return True
            if not out.trying:
                return False  # a request it had in flight when it failed: the same outage
            out.failures += 1
            out.trying = False
            out.back_at = now + min(self.cooldown_s * 2 ** (out.failures - 1), self.max_cooldown_s)
            return True

    def answered(self, tier: str) -> bool:
        """`tier` answered a request: it is routed to again. True when it had been left out."""
        with self._lock:
            return self._out.pop(tier, None) is not None

    def usable(self, tiers: Iterable[str]) -> set[str]:
        """Of `tiers`, those the router may choose now: never failed, or their time out has passed."""
        with self._lock:
            now = self._clock()
            return {tier for tier in tiers if (out := self._out.get(tier)) is None or now >= out.back_at}

    def chosen(self, tier: str) -> None:
        """The router sent a request to `tier`. If it was left out, this request tries it, and other requests
        keep away from it for another `cooldown_s` or until it answers."""
        with self._lock:
            out = self._out.get(tier)
            if out is not None:
                out.trying = True
                out.back_at = max(out.back_at, self._clock() + self.cooldown_s)

    def left_out(self) -> dict[str, float]:
        """Each tier left out now and the seconds until it may be tried again (metrics, `explain`)."""
        with self._lock:
            now = self._clock()
            return {tier: max(0.0, out.back_at - now) for tier, out in self._out.items()}
