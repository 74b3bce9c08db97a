"""Fakes and builders for the unit tests: a deterministic word-hashing embedder, a word counter, an engine."""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from echolm_middleware.backends.memory_store import InMemoryExampleStore
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.config import (
    AdmissionSettings,
    AugmentationSettings,
    RequestSettings,
    RetrievalSettings,
    RoutingSettings,
    TenancySettings,
    UtilityWeights,
)
from echolm_middleware.core.engine import Engine, EngineSettings
from echolm_middleware.core.routing import TierProfile
from echolm_middleware.core.types import Message
from echolm_middleware.quality_target import guard_for

WORD = re.compile(r"[a-z0-9]+")
DIMENSIONS = 4096
START = 1_700_000_000.0


class WordHashEmbedder:
    """Bag of words hashed into fixed dimensions: same words (any case or punctuation) → the same vector."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [self._one(text) for text in texts]

    @staticmethod
    def _one(text: str) -> list[float]:
        vector = [0.0] * DIMENSIONS
        for word in WORD.findall(text.lower()):
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMENSIONS] += 1.0
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]


class WordCounter:
    """A TokenCounter that charges one token per whitespace-separated word."""

    def __init__(self) -> None:
        self.counted: list[str] = []

    def count(self, text: str) -> int:
        self.counted.append(text)
        return len(text.split())


class FakeClock:
    """A settable clock, for created_at stamps and for the load tracker's moving average."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


CHEAP = TierProfile(name="cheap", rank=0, cost=0.05, capacity=2.0, quality_prior=0.3, max_input_tokens=2048)
STRONG = TierProfile(name="strong", rank=1, cost=1.0, capacity=1.0, quality_prior=0.8, max_input_tokens=2048)


# Pinned here, not taken from the defaults, so the bucket arithmetic in the engine tests stays put when
# the defaults are tuned: with these weights a candidate at similarity 1.0 has utility 0.94 ("high"),
# 0.93 → 0.88 ("high"), 0.87 → 0.79 ("mid"), 0.82 → 0.69 ("low"), and below 0.75 it misses the threshold.
WEIGHTS = UtilityWeights(bias=-10.0, similarity=11.0, quality=1.0, source=0.5, offload=1.0, age=0.3)
RETRIEVAL = RetrievalSettings(
    candidates=20, k=3, threshold=0.5, max_example_tokens=600, near_duplicate_similarity=0.97, weights=WEIGHTS
)
ROUTING = RoutingSettings(
    policy="mean",
    cost_weight=0.1,
    load_lambda=0.5,
    load_gamma=1.0,
    load_window_s=2.0,
    prior_strength=10.0,
    example_uplift=0.9,
    load_signal="queue",  # the tests that route on the delay signal say so
    max_load_penalty=10.0,  # uncapped: load may shed a request without examples (the cap's tests set it)
)
ADMISSION = AdmissionSettings(initial_quality=0.8, min_quality=0.5)


def engine_settings(
    *,
    retrieval: RetrievalSettings | None = None,
    augmentation: AugmentationSettings | None = None,
    routing: RoutingSettings | None = None,
    admission: AdmissionSettings | None = None,
    requests: RequestSettings | None = None,
    tenancy: TenancySettings | None = None,
) -> EngineSettings:
    return EngineSettings(
        retrieval=retrieval or RETRIEVAL,
        augmentation=augmentation or AugmentationSettings(format="inline", max_answer_chars=1200),
        routing=routing or ROUTING,
        admission=admission or ADMISSION,
        requests=requests or RequestSettings(),
        tenancy=tenancy or TenancySettings(),
    )


@dataclass
class EngineKit:
    """An engine and the parts a test inspects after driving it."""

    engine: Engine
    store: InMemoryExampleStore
    state: SQLiteState
    embedder: WordHashEmbedder
    clock: FakeClock


EngineFactory = Callable[..., EngineKit]


class ImmediateShadow:
    """Scores every submitted comparison at once with a fixed score, and keeps what it was given."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.seen: list[tuple[list[Message], str]] = []

    def submit(self, messages: Sequence[Message], cheap_answer: str, done: Callable[[float], None]) -> bool:
        self.seen.append((list(messages), cheap_answer))
        done(self.score)
        return True


@pytest.fixture
def make_engine() -> Iterator[EngineFactory]:
    """Build engines over the in-memory store, an in-memory SQLite state and the fakes above."""
    states: list[SQLiteState] = []

    def build(
        tiers: Sequence[TierProfile] = (CHEAP, STRONG),
        *,
        state: SQLiteState | None = None,
        shadow: Any = None,
        rng: random.Random | None = None,
        **settings: object,
    ) -> EngineKit:
        store = InMemoryExampleStore()
        if state is None:
            state = SQLiteState(":memory:")
            states.append(state)
        embedder = WordHashEmbedder()
        clock = FakeClock()
        chosen = engine_settings(**settings)  # type: ignore[arg-type]
        target = chosen.routing.quality_target
        engine = Engine(
            chosen,
            tiers,
            embedder=embedder,
            store=store,
            tokens=WordCounter(),
            decisions=state,
            stats=state,
            clock=clock,
            rng=rng,
            quality=guard_for(target, shadow, rng=random.Random(0)) if target and shadow else None,
        )
        return EngineKit(engine, store, state, embedder, clock)

    yield build
    for state in states:
        state.close()
