"""Users' feedback during a bench pass: a share of EchoLM's answers scored, as an application's users
would rate them, and sent to the proxy's `POST /echolm/feedback` while the pass runs.

The score is the workload's reference metric (exact match, the intent label), the judgement a user who
knew the answer would give. Which answers are scored is drawn from the request's prompt and the seed,
so two passes over the same requests score the same ones. The router then learns from them as it
would on live traffic: the tier's posterior in the request's context bucket, the examples' value.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from echolm_lab.bench.systems import Answered
from echolm_lab.datasets import QARecord

Score = Callable[[str, QARecord], float]


@dataclass
class FeedbackCounts:
    sent: int = 0
    recorded: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (404: a pass-through)
    failed: int = 0  # the request itself failed (connection refused, timeout)
    score_sum: float = 0.0

    def describe(self) -> str:
        mean = self.score_sum / self.recorded if self.recorded else 0.0
        refused = ", ".join(f"{n} answered {status}" for status, n in sorted(self.refused.items())) or "none refused"
        return f"{self.recorded} of {self.sent} scores recorded (mean {mean:.2f}); {refused}; {self.failed} failed"


def chosen_for_feedback(prompt: str, share: float, seed: int) -> bool:
    """Whether this request's answer is scored: a draw from the prompt and the seed, the same every pass."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class FeedbackSender:
    """Scores `share` of the answers EchoLM kept a decision for and posts each score to the proxy."""

    def __init__(
        self, url: str, api_key: str, score: Score, share: float, seed: int, *, timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        auth = {"Authorization": f"Bearer {api_key}"}
        self._client = httpx.Client(base_url=url, headers=auth, timeout=timeout_s, transport=transport)
        self._score, self._share, self._seed = score, share, seed
        self._lock = threading.Lock()
        self.counts = FeedbackCounts()

    def __call__(self, item: QARecord, answered: Answered) -> None:
        if answered.error is not None or not answered.request_id:
            return
        if not chosen_for_feedback(item.prompt, self._share, self._seed):
            return
        score = self._score(answered.answer, item)
        try:
            response = self._client.post("/echolm/feedback", json={"request_id": answered.request_id, "score": score})
        except httpx.HTTPError:
            with self._lock:
                self.counts.sent += 1
                self.counts.failed += 1
            return
        with self._lock:
            self.counts.sent += 1
            if response.status_code == 200:
                self.counts.recorded += 1
                self.counts.score_sum += score
            else:
                self.counts.refused[response.status_code] = self.counts.refused.get(response.status_code, 0) + 1

    def close(self) -> None:
        self._client.close()
