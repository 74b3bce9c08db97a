"""The chance that an answer not from the strong tier is as good as its answer, per request and choice.

This is the router's learned utility (the paper's stage 2, per request rather than per example). Its
inputs are what retrieval already found for the request: how close the nearest cached requests are, how
many are close, whether their answers agree with each other (a label or a fact asked again gets the same
answer from every neighbour; an open question gets different ones), and how long the question and the
nearest answer are. A logistic model per choice (serve the nearest answer as it is; the cheap tier with
the examples) turns them into a probability. Its weights are fitted offline on training data (the
answers tables' train items, never the requests a benchmark measures) and move online with evidence.

Pure Python: a handful of features needs no array library on the request path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from echolm_middleware.core.types import Candidate

FEATURES = (
    "bias",
    "top_similarity",
    "mean_top3_similarity",
    "share_close",  # of the nearest NEIGHBOURS, the share at or above CLOSE
    "neighbour_agreement",  # of the nearest NEIGHBOURS, the share whose answer is the nearest one's
    "log_question_chars",
    "log_answer_chars",  # of the nearest answer
)
NEIGHBOURS = 5
CLOSE = 0.8
_WORDS = re.compile(r"\w+")


def same_answer_key(text: str) -> str:
    """An answer as compared for agreement: its words, case-folded (punctuation and spacing aside)."""
    return " ".join(_WORDS.findall(text.casefold()))


def offload_features(candidates: Sequence[Candidate], query: str) -> list[float]:
    """The model's inputs, in FEATURES order, from the candidates retrieval found (nearest first or not)."""
    nearest = sorted(candidates, key=lambda c: c.similarity, reverse=True)[:NEIGHBOURS]
    if not nearest:
        return [1.0, 0.0, 0.0, 0.0, 0.0, math.log1p(len(query)), 0.0]
    top = nearest[0]
    first_answer = same_answer_key(top.example.answer)
    three = nearest[:3]
    return [
        1.0,
        top.similarity,
        sum(c.similarity for c in three) / len(three),
        sum(c.similarity >= CLOSE for c in nearest) / NEIGHBOURS,
        sum(same_answer_key(c.example.answer) == first_answer for c in nearest[1:]) / (NEIGHBOURS - 1),
        math.log1p(len(query)),
        math.log1p(len(top.example.answer)),
    ]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class OffloadModel:
    """Logistic regression over FEATURES: P(as good as the strong tier) for one choice."""

    weights: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"an offload model has {len(FEATURES)} weights ({', '.join(FEATURES)})")

    def probability(self, features: Sequence[float]) -> float:
        return _sigmoid(sum(w * x for w, x in zip(self.weights, features, strict=True)))

    def learn(self, features: Sequence[float], outcome: float, learning_rate: float) -> None:
        """One step of online logistic regression on evidence: `outcome` 1 (as good), 0 (worse), or between."""
        error = outcome - self.probability(features)
        self.weights = [w + learning_rate * error * x for w, x in zip(self.weights, features, strict=True)]
