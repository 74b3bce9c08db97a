"""The systems `echolm bench` compares, each answering one chat request at a time.

Every model call goes through a LiteLLM proxy over HTTP, streamed, so time to first token is measured
the same way for all. EchoLM decides inside the proxy (our hook); the two baselines decide in front of
it, as their own tools are deployed: a semantic cache wraps the client (GPTCache) and a difficulty
router is a controller that picks the model before calling it (RouteLLM). Both use the same MiniLM
embedder as EchoLM, in the benchmark's process, so their own time counts as their overhead.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CACHE_TIER = "cache"


@dataclass(frozen=True)
class Answered:
    """One request's outcome as the client saw it."""

    answer: str
    tier: str
    latency_s: float
    ttft_s: float | None
    overhead_ms: float | None = None
    examples: int = 0
    example_tokens: int = 0
    error: str | None = None
    request_id: str | None = None  # EchoLM's kept decision (x-echolm-request-id), what feedback names


class System(Protocol):
    name: str

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered: ...


class Embed(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def query_of(messages: Sequence[dict[str, str]]) -> str:
    """The text a baseline keys on: the last user message (as EchoLM's own query does by default)."""
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


class ProxyChat:
    """Streams one chat completion from a LiteLLM proxy and reads our decision headers if present."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 600.0) -> None:
        from openai import OpenAI

        # Typed loosely: the messages are plain dicts, and the streamed parse yields chunks.
        self._client: Any = OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=timeout_s, max_retries=0)

    def __call__(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        started = time.perf_counter()
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
            )
            headers = raw.headers
            first: float | None = None
            parts: list[str] = []
            for chunk in raw.parse():
                text = chunk.choices[0].delta.content if chunk.choices else None
                if text:
                    first = first if first is not None else time.perf_counter() - started
                    parts.append(text)
        except Exception as exc:  # a failed request is counted and reported, not fatal to the run
            return Answered("", model, time.perf_counter() - started, None, error=f"{type(exc).__name__}: {exc}"[:300])
        overhead = headers.get("x-echolm-overhead-ms")
        return Answered(
            answer="".join(parts).strip(),
            tier=headers.get("x-echolm-tier", model),
            latency_s=time.perf_counter() - started,
            ttft_s=first,
            overhead_ms=float(overhead) if overhead else None,
            examples=int(headers.get("x-echolm-examples", "0") or 0),
            example_tokens=int(headers.get("x-echolm-example-tokens", "0") or 0),
            request_id=headers.get("x-echolm-request-id") or None,
        )


@dataclass
class ModelSystem:
    """Every request to one model group (strong-only, small-only), or to EchoLM when our hook is loaded."""

    name: str
    chat: ProxyChat
    model: str

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        return self.chat(self.model, messages, max_tokens)


class SemanticCache:
    """GPTCache / LiteLLM semantic cache: return the nearest past answer above a similarity threshold.

    A miss goes to the strong tier and its answer is cached, as those caches do. The index is exact
    (a matrix product); at benchmark sizes that is faster than any ANN index and gives the baseline
    its best case.
    """

    def __init__(
        self, name: str, embedder: Embed, threshold: float, fallback: ModelSystem, warm: Sequence[tuple[str, str]]
    ) -> None:
        self.name = name
        self._embedder = embedder
        self._threshold = threshold
        self._fallback = fallback
        self._lock = threading.Lock()
        import numpy as np

        # One matrix, grown on a miss (rare), not rebuilt from lists on every request: the lookup is
        # timed as the baseline's overhead.
        vectors = embedder.embed([prompt for prompt, _ in warm]) if warm else []
        self._matrix = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, 0), dtype=np.float32)
        self._answers = [answer for _, answer in warm]

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        started = time.perf_counter()
        vector = self._embedder.embed([query_of(messages)])[0]
        hit = self._nearest(vector)
        overhead_ms = (time.perf_counter() - started) * 1000
        if hit is not None:
            elapsed = time.perf_counter() - started
            return Answered(hit, CACHE_TIER, elapsed, elapsed, overhead_ms)
        served = self._fallback.answer(messages, max_tokens)
        if served.error is None and served.answer:
            self._add(vector, served.answer)
        return _after_overhead(served, started, overhead_ms)

    def _add(self, vector: Sequence[float], answer: str) -> None:
        import numpy as np

        row = np.asarray([vector], dtype=np.float32)
        with self._lock:
            self._matrix = row if not self._answers else np.vstack([self._matrix, row])
            self._answers.append(answer)

    def _nearest(self, vector: Sequence[float]) -> str | None:
        import numpy as np

        with self._lock:
            if not self._answers:
                return None
            matrix, answers = self._matrix, list(self._answers)
        similarities = matrix @ np.asarray(vector, dtype=np.float32)
        best = int(similarities.argmax())
        return answers[best] if float(similarities[best]) >= self._threshold else None


class DifficultyRouter:
    """RouteLLM-style router: the cheap tier when the request is predicted easy enough, no examples.

    The prediction is RouteLLM's similarity-weighted ranking in its simplest form: the share of the
    nearest labelled warm-up requests (weighted by similarity) on which the cheap tier did as well as
    the strong one. Requests predicted at or above `threshold` go to the cheap tier.
    """

    def __init__(
        self,
        name: str,
        embedder: Embed,
        threshold: float,
        cheap: ModelSystem,
        strong: ModelSystem,
        labelled: Sequence[tuple[str, float]],
        k: int = 10,
    ) -> None:
        import numpy as np

        self.name = name
        self._embedder = embedder
        self._threshold_key: tuple[float, str] = (threshold, "")
        self._cheap, self._strong = cheap, strong
        self._k = k
        self._matrix = np.asarray(embedder.embed([prompt for prompt, _ in labelled]), dtype=np.float32)
        self._labels = np.asarray([label for _, label in labelled], dtype=np.float32)

    def predicted_easy(self, vector: Sequence[float]) -> float:
        """Similarity-weighted share of the k nearest labelled requests the cheap tier got right."""
        import numpy as np

        if len(self._labels) == 0:
            return 0.0
        similarities = self._matrix @ np.asarray(vector, dtype=np.float32)
        nearest = np.argsort(-similarities)[: self._k]
        weights = np.clip(similarities[nearest], 1e-6, None)
        return float((weights * self._labels[nearest]).sum() / weights.sum())

    def _rank_key(self, query: str, vector: Sequence[float]) -> tuple[float, str]:
        # Ties in the prediction (a few labels give few distinct values) are broken by a stable hash of
        # the text, so a share of strong calls can be hit whatever the ties.
        return self.predicted_easy(vector), hashlib.sha256(query.encode()).hexdigest()

    def calibrate(self, queries: Sequence[str], *, strong_share: float) -> float:
        """Set the threshold so that `strong_share` of these queries go to the strong tier.

        RouteLLM picks its threshold the same way, for a target share of strong-model calls; calibrating
        on the very requests served is the baseline's best case. Returns the threshold's prediction.
        """
        # One text per call, as `answer` embeds it: a batch takes another path through the embedder (padding,
        # kernel shapes, MiniLM's batched `encode`) whose vectors differ in the last bits, and the request the
        # threshold sits on would then land on either side of its own calibrated prediction.
        keys = sorted(self._rank_key(q, self._embedder.embed([q])[0]) for q in queries)
        if not keys:
            return 0.0
        count = min(len(keys), max(0, round(strong_share * len(keys))))
        # Requests ranked below the threshold go strong: the lowest `count` of them.
        self._threshold_key = keys[count] if count < len(keys) else (float("inf"), "")
        return self._threshold_key[0]

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        started = time.perf_counter()
        query = query_of(messages)
        vector = self._embedder.embed([query])[0]
        target = self._cheap if self._rank_key(query, vector) >= self._threshold_key else self._strong
        overhead_ms = (time.perf_counter() - started) * 1000
        return _after_overhead(target.answer(messages, max_tokens), started, overhead_ms)


def _after_overhead(served: Answered, started: float, overhead_ms: float) -> Answered:
    """A model's answer as the client saw it: latency from `started`, the baseline's own time in front of it."""
    return Answered(
        served.answer,
        served.tier,
        time.perf_counter() - started,
        None if served.ttft_s is None else served.ttft_s + overhead_ms / 1000,
        overhead_ms,
        error=served.error,
    )
