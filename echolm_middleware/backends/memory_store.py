"""An in-memory example store: the reference behaviour for the contract tests, and a zero-setup backend."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

from echolm_middleware.core.types import Candidate, Example, Vector, checked_change


def _unit(vector: Vector) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class InMemoryExampleStore:
    """Examples per tenant in dicts; exact cosine search. Not shared across processes."""

    def __init__(self) -> None:
        self._examples: dict[str, dict[str, tuple[Example, list[float]]]] = {}
        self._lock = threading.Lock()

    def nearest(self, tenant: str, vector: Vector, n: int, *, context: str | None = None) -> list[Candidate]:
        query = _unit(vector)
        with self._lock:
            items = [
                (example, stored)
                for example, stored in self._examples.get(tenant, {}).values()
                if context is None or example.context == context
            ]
        scored = [
            Candidate(example, sum(a * b for a, b in zip(query, stored, strict=True)), stored)
            for example, stored in items
        ]
        scored.sort(key=lambda c: c.similarity, reverse=True)
        return scored[:n]

    def upsert(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> None:
        if len(examples) != len(vectors):
            raise ValueError("one vector per example")
        with self._lock:
            partition = self._examples.setdefault(tenant, {})
            for example, vector in zip(examples, vectors, strict=True):
                partition[example.id] = (example, _unit(vector))

    def add(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> int:
        if len(examples) != len(vectors):
            raise ValueError("one vector per example")
        added = 0
        with self._lock:
            partition = self._examples.setdefault(tenant, {})
            for example, vector in zip(examples, vectors, strict=True):
                if example.id not in partition:
                    partition[example.id] = (example, _unit(vector))
                    added += 1
        return added

    def modify(self, tenant: str, ids: Sequence[str], change: Callable[[Example], Example]) -> int:
        with self._lock:
            partition = self._examples.get(tenant, {})
            changed = 0
            for example_id in dict.fromkeys(ids):
                if example_id in partition:
                    example, vector = partition[example_id]
                    partition[example_id] = (checked_change(example, change), vector)
                    changed += 1
            return changed

    def examples(self, tenant: str) -> list[Example]:
        with self._lock:
            return [example for example, _ in self._examples.get(tenant, {}).values()]

    def delete(self, tenant: str, ids: Sequence[str]) -> None:
        with self._lock:
            partition = self._examples.get(tenant, {})
            for example_id in ids:
                partition.pop(example_id, None)

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(self._examples)

    def count(self, tenant: str) -> int:
        with self._lock:
            return len(self._examples.get(tenant, {}))
