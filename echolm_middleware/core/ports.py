"""The small interfaces the core talks to; backends implement them, tests fake them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from echolm_middleware.core.types import Candidate, Completion, Decision, Example, Message, Vector


class Embedder(Protocol):
    """Turns texts into unit-length vectors (cosine similarity = dot product)."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class ExampleStore(Protocol):
    """Tenant-partitioned examples; every call names its tenant and never sees another's."""

    def nearest(self, tenant: str, vector: Vector, n: int, *, context: str | None = None) -> list[Candidate]:
        """The `n` examples nearest `vector`; with `context`, only those kept under that context key."""
        ...

    def add(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> int:
        """Add the examples whose ids the tenant does not hold yet; never replaces one. Returns how many."""
        ...

    def upsert(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> None:
        """Write the examples, replacing those with the same ids (bulk loads; live requests use `add`)."""
        ...

    def modify(self, tenant: str, ids: Sequence[str], change: Callable[[Example], Example]) -> int:
        """Read, change and write back each listed example under one lock; unknown ids are ignored.

        `change` may not alter an example's id or prompt. Returns how many examples were changed.
        """
        ...

    def examples(self, tenant: str) -> list[Example]:
        """Every example the tenant holds (for upkeep: replay, coverage and eviction)."""
        ...

    def delete(self, tenant: str, ids: Sequence[str]) -> None:
        """Remove the listed examples; unknown ids are ignored."""
        ...

    def tenants(self) -> list[str]:
        """Every tenant that holds a collection."""
        ...

    def count(self, tenant: str) -> int: ...


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


class DecisionLog(Protocol):
    """Keeps every decision by request id, and whether its outcome was already recorded."""

    def put(self, decision: Decision) -> None: ...

    def get(self, request_id: str) -> Decision | None: ...

    def mark_recorded(self, request_id: str, outcome: str) -> bool:
        """Mark once; False when the request was already recorded (so a record happens once)."""
        ...

    def mark_feedback(self, request_id: str, score: float) -> bool:
        """Keep the score once; False when the request already has feedback (so it counts once)."""
        ...

    def recorded_by(self, request_id: str) -> str | None:
        """The tier whose outcome was recorded for the request, or None if none was."""
        ...


class DecisionHistory(Protocol):
    """Past decisions read back in bulk: upkeep's coverage looks in them for recent misses."""

    def recent(self, since: float) -> list[Decision]:
        """Decisions made at or after `since`, oldest first."""
        ...

    def recorded_by(self, request_id: str) -> str | None:
        """The tier whose outcome was recorded for the request, or None if none was."""
        ...


class UpkeepJournal(Protocol):
    """The steps an upkeep pass planned, kept until each is done, so the next pass finishes a killed one."""

    def unfinished_pass(self) -> tuple[str, list[tuple[int, str]]] | None:
        """The pass left unfinished, if any: its run id and its steps not yet done (seq, step), in order."""
        ...

    def begin_pass(self, run_id: str, steps: Sequence[str]) -> None:
        """Journal a new pass's steps (numbered from 0 in the order given), none of them done."""
        ...

    def finish_step(self, run_id: str, seq: int) -> None:
        """Mark a step done; the pass leaves the journal when its last step is done."""
        ...


class RouterStatsStore(Protocol):
    """Persists the router's Beta posteriors and the fitted utility weights across restarts."""

    def load_posteriors(self) -> dict[tuple[str, str], tuple[float, float]]: ...

    def add_to_posterior(self, tier: str, bucket: str, successes: float, failures: float) -> None: ...

    def load_weights(self) -> dict[str, float] | None: ...

    def save_weights(self, weights: Mapping[str, float]) -> None: ...


class Completer(Protocol):
    """Asks one tier one question outside any user request (the upkeep asks the strongest)."""

    def complete(
        self, tier: str, prompt: str, *, max_tokens: int, temperature: float, instructions: str = ""
    ) -> Completion:
        """One answer to `prompt`, under `instructions` as the system message when given."""
        ...


class QualityCheck(Protocol):
    """The quality target (echolm_middleware.quality_target): a bias on the strongest tier's score, moved by
    comparing a sampled share of cheap-tier answers with the strongest tier's."""

    def strongest_bias(self) -> float: ...

    def sample(self, request_id: str, messages: Sequence[Message], *, always: bool = False) -> None:
        """A request routed to a cheaper tier, as the caller sent it: kept if it is one to compare (`always`:
        compared whatever the share, its score moving the bias only if the share would have picked it)."""
        ...

    def compare(
        self,
        request_id: str,
        answer: str,
        *,
        comparable: bool,
        evidence: Callable[[float], None] | None = None,
        moves_bias: bool = True,
    ) -> None:
        """The cheaper tier's (or the cache's) answer: compared (off the request path) if the request was kept
        and it is whole; `evidence` gets the comparison's score (0-1) too; the score moves the strongest
        tier's bias only if `moves_bias`."""
        ...


class LoadBoard(Protocol):
    """Requests in flight per tier, as every worker that shares the board sees them.

    `routing.LoadTracker` keeps it in this process; `backends.redis_coordination` shares it between
    workers and hosts.
    """

    def begin(self, tier: str, key: str) -> None: ...

    def finish(self, key: str) -> str | None:
        """The request `key` ended: its tier, or None for a key that is unknown, stale or already finished."""
        ...

    def queue_if_added(self, tiers: Sequence[str]) -> dict[str, float]:
        """Requests each tier would have in flight if this one went there."""
        ...

    def loads(self) -> dict[str, float]:
        """The moving average of requests in flight per tier."""
        ...

    def in_flight(self) -> dict[str, int]: ...


class Leases(Protocol):
    """Named, expiring locks: one holder at a time (the upkeep's one pass per period)."""

    def try_lease(self, name: str, holder: str, ttl_s: float, now: float) -> bool:
        """Take or renew the lease unless another holder has it and it has not expired."""
        ...

    def lease_holder(self, name: str, now: float) -> str | None: ...

    def release_lease(self, name: str, holder: str) -> None:
        """Release it if `holder` holds it; otherwise nothing happens."""
        ...
