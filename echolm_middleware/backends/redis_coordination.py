"""Per-tier load and the upkeep's leases in Redis, so several proxy workers (on several hosts) act as one.

Load: one sorted set per tier holds the requests in flight, scored by when they began; a request that
never reports its end (its worker was killed) drops out after `stale_after_s`. The moving average each
worker routes on under `load_signal: ema` follows the shared count, sampled whenever it routes.

Failing open: a Redis that is down, slow or refuses us never fails a request. Every command has a short
socket timeout; after a failure the board routes on this worker's own in-flight count (kept all along)
for `retry_after_s`, then tries Redis again, so it recovers without a restart. Ends that could not be
written are retried when Redis answers again. Leases fail closed instead: an upkeep pass that cannot
take its lock does not run, and the next period tries again.

Why our own parts where redis-py has some: its `Retry` retries a command (with backoff) but does not
stop asking a Redis that is down, which on the request path costs every request its timeout; `Degraded`
skips Redis for `retry_after_s` and routes on the local count meanwhile. Its `Lock` takes, extends and
releases a lock held by one Lock object, but a lease here is renewed by a later pass of the same holder
(another object, the same holder name), which `Lock` allows only by setting its thread-local token by
hand; the two scripts below are what `Lock` runs, keyed by the holder's name instead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from echolm_middleware.backends._lazy import require
from echolm_middleware.config import CoordinationSettings
from echolm_middleware.core.routing import LoadTracker
from echolm_middleware.metrics import metrics, quietly

logger = logging.getLogger("echolm")

# Take or renew: set when free or already ours, with the lease's time to live.
_TAKE = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Release only our own lease: a pass that overran its TTL must not delete its successor's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def redis_client(settings: CoordinationSettings) -> Any:
    """A client with short timeouts: it is asked on the request path."""
    redis = require("redis", "coordination")
    if settings.redis_url is None:
        raise ValueError("coordination.redis_url is not set")
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        retry_on_timeout=False,
        decode_responses=True,
    )


class Degraded:
    """Whether Redis is being skipped after a failure, and why; counts failures for the metrics."""

    def __init__(self, retry_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._until = 0.0
        self._lock = threading.Lock()
        self.failures = 0

    def skipping(self) -> bool:
        return self._clock() < self._until

    def failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            first = not self.skipping()
            self.failures += 1
            self._until = self._clock() + self._retry_after_s
        quietly(lambda: metrics().coordination_errors.labels(what=what).inc())
        if first:  # once per outage window, not once per request
            logger.warning("echolm: Redis %s failed (%s); routing on this worker's own load", what, exc)


class RedisLoadBoard:
    """The LoadBoard over Redis, with this worker's LoadTracker as the fallback it keeps current."""

    def __init__(
        self,
        client: Any,
        settings: CoordinationSettings,
        *,
        window_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = settings.key_prefix
        self._window_s = window_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self.local = LoadTracker(window_s, stale_after_s)
        self.degraded = Degraded(settings.retry_after_s)
        self._lock = threading.Lock()
        self._unfinished: dict[str, str] = {}  # ends Redis did not take, retried when it answers again
        self._ema: dict[str, float] = {}
        self._ema_at: dict[str, float] = {}

    def _key(self, tier: str) -> str:
        return f"{self._prefix}:inflight:{tier}"

    def begin(self, tier: str, key: str) -> None:
        self.local.begin(tier, key)
        if self.degraded.skipping():
            return
        try:
            self._client.zadd(self._key(tier), {key: self._clock()})
        except Exception as exc:  # any client error: route locally, never fail the request
            self.degraded.failed("begin", exc)

    def finish(self, key: str) -> str | None:
        # Ends come back to the worker that began the request: its own tracker knows the tier.
        tier = self.local.finish(key)
        if tier is None:
            return None
        if self.degraded.skipping():
            self._keep_unfinished(key, tier)
            return tier
        try:
            self._client.zrem(self._key(tier), key)
        except Exception as exc:
            self.degraded.failed("finish", exc)
            self._keep_unfinished(key, tier)
        return tier

    def _keep_unfinished(self, key: str, tier: str) -> None:
        with self._lock:
            self._unfinished[key] = tier
            # Past the stale bound Redis drops them anyway: keep the retry list bounded.
            while len(self._unfinished) > 10_000:
                self._unfinished.pop(next(iter(self._unfinished)))

    def _shared_counts(self, tiers: Sequence[str]) -> dict[str, int] | None:
        """In-flight per tier across every worker, or None when Redis cannot say (use local counts)."""
        if self.degraded.skipping():
            return None
        now = self._clock()
        with self._lock:
            unfinished = dict(self._unfinished)
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, tier in unfinished.items():
                pipe.zrem(self._key(tier), key)
            for tier in tiers:
                pipe.zremrangebyscore(self._key(tier), "-inf", now - self._stale_after_s)
                pipe.zcard(self._key(tier))
            replies = pipe.execute()
        except Exception as exc:
            self.degraded.failed("load read", exc)
            return None
        with self._lock:
            for key in unfinished:
                self._unfinished.pop(key, None)
        cards = replies[len(unfinished) :][1::2]
        return {tier: int(count) for tier, count in zip(tiers, cards, strict=True)}

    def _known_tiers(self) -> list[str]:
        return sorted(set(self.local.in_flight()) | set(self._ema))

    def in_flight(self) -> dict[str, int]:
        tiers = self._known_tiers()
        shared = self._shared_counts(tiers)
        return shared if shared is not None else self.local.in_flight()

    def queue_if_added(self, tiers: Sequence[str]) -> dict[str, float]:
        shared = self._shared_counts(tiers)
        if shared is None:
            return self.local.queue_if_added(tiers)
        return {tier: shared.get(tier, 0) + 1.0 for tier in tiers}

    def loads(self) -> dict[str, float]:
        """The moving average of the shared count, sampled at each call (the local one while degraded)."""
        tiers = self._known_tiers()
        shared = self._shared_counts(tiers)
        if shared is None:
            return self.local.loads()
        now = time.monotonic()
        with self._lock:
            for tier, count in shared.items():
                elapsed = now - self._ema_at.get(tier, now)
                previous = self._ema.get(tier, float(count))
                self._ema[tier] = count + (previous - count) * math.exp(-elapsed / self._window_s)
                self._ema_at[tier] = now
            return dict(self._ema)


class RedisLeases:
    """The Leases over Redis keys with a time to live; `now` is Redis's own clock, not the caller's."""

    def __init__(self, client: Any, settings: CoordinationSettings) -> None:
        self._client = client
        self._prefix = settings.key_prefix
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:lease:{name}"

    def try_lease(self, name: str, holder: str, ttl_s: float, now: float) -> bool:
        del now  # Redis expires the key itself
        try:
            return bool(self._take(keys=[self._key(name)], args=[holder, max(1, int(ttl_s * 1000))]))
        except Exception as exc:
            # Fail closed: without the lock no pass runs; the next period tries again.
            logger.warning("echolm: Redis lease %s not taken (%s); skipping this pass", name, exc)
            return False

    def lease_holder(self, name: str, now: float) -> str | None:
        del now
        try:
            holder = self._client.get(self._key(name))
        except Exception as exc:
            logger.warning("echolm: Redis lease %s unreadable (%s)", name, exc)
            return None
        return str(holder) if holder is not None else None

    def release_lease(self, name: str, holder: str) -> None:
        try:
            self._release(keys=[self._key(name)], args=[holder])
        except Exception as exc:  # the TTL frees it in the end
            logger.warning("echolm: Redis lease %s not released (%s); it expires on its own", name, exc)
