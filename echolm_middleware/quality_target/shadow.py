"""Shadow comparisons for the quality target: the strongest tier answers a sampled cheap-tier request again.

Runs off the request path, one comparison at a time in a background thread, with a bounded queue: when
the strongest tier is too slow to keep up, samples are dropped (and counted), never queued without end.
A comparison that fails (the tier is down, the judge's verdict cannot be read) is dropped as well; it
never reaches the user's request, which was answered already.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol

from echolm_middleware.core.types import Completion, Message
from echolm_middleware.quality_target.answer_match import token_f1
from echolm_middleware.quality_target.judge import judge_pair, pair_quality

logger = logging.getLogger("echolm")
Metric = Literal["agreement", "judge"]


class Shadow(Protocol):
    """Asks the strongest tier a sampled cheap-tier request again, off the request path, and scores the pair."""

    def submit(self, messages: Sequence[Message], cheap_answer: str, done: Callable[[float], None]) -> bool:
        """Queue one comparison; `done` gets its score (0-1) later. False when it was dropped."""
        ...


class ChatCompleter(Protocol):
    def chat(self, tier: str, messages: Sequence[Message], *, max_tokens: int, temperature: float) -> Completion: ...


def agreement(cheap_answer: str, strong_answer: str) -> float:
    """Token F1 of the cheap answer against the strongest tier's (SQuAD normalisation): 1 = the same answer."""
    return token_f1(cheap_answer, [strong_answer])


class ShadowComparisons:
    """A `Shadow` over a completer that reaches the strongest tier."""

    def __init__(
        self,
        completer: ChatCompleter,
        strongest: str,
        *,
        metric: Metric,
        max_tokens: int,
        max_pending: int = 4,
    ) -> None:
        self._completer = completer
        self._strongest = strongest
        self._metric = metric
        self._max_tokens = max_tokens
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="echolm-shadow")
        self.dropped = 0
        self.failed = 0

    def submit(self, messages: Sequence[Message], cheap_answer: str, done: Callable[[float], None]) -> bool:
        """Queue one comparison; False (and counted) when the queue is full."""
        with self._lock:
            if self._pending >= self._max_pending:
                self.dropped += 1
                return False
            self._pending += 1
        self._executor.submit(self._compare, list(messages), cheap_answer, done)
        return True

    def _compare(self, messages: list[Message], cheap_answer: str, done: Callable[[float], None]) -> None:
        try:
            strong = self._completer.chat(
                self._strongest, messages, max_tokens=self._max_tokens, temperature=0.0
            ).text.strip()
            score = self._score(messages, cheap_answer, strong) if strong else None
            if score is not None:
                done(score)
        except Exception as exc:  # a lost sample, not a lost request
            with self._lock:
                self.failed += 1
            logger.warning("echolm: a quality-target comparison failed: %s", exc)
        finally:
            with self._lock:
                self._pending -= 1

    def _score(self, messages: list[Message], cheap_answer: str, strong_answer: str) -> float | None:
        if self._metric == "agreement":
            return agreement(cheap_answer, strong_answer)
        prompt = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")

        def call(judge_messages: list[dict[str, str]]) -> str:
            return self._completer.chat(self._strongest, judge_messages, max_tokens=64, temperature=0.0).text

        return pair_quality(judge_pair(call, prompt, cheap_answer, strong_answer))

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """For tests and shutdown: True once no comparison is queued or running."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.05)
        return False
