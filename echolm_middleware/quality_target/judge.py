"""Pairwise LLM judge for open-ended workloads: Arena-Hard's 7-point verdict, asked in both orders.

Open-ended requests have no reference answer, so the benchmark scores a system by how often a judge model
prefers its answer over the baseline's (strong-only) answer to the same request. The judge is a small
local instruct model with a short context, so the prompt is plain and bounded, and its output is parsed
leniently: a verdict that cannot be read counts as unparsed, never as an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

JudgeCall = Callable[[list[dict[str, str]]], str]
Outcome = Literal["win", "tie", "loss", "unparsed"]

# Scores from answer A's side, as in Arena-Hard (Li et al. 2024, "From Crowdsourced Data to High-Quality
# Benchmarks"), which weighs ">>" verdicts more than ">" ones.
VERDICT_SCORES: dict[str, int] = {
    "A>>>B": 3,
    "A>>B": 2,
    "A>B": 1,
    "A=B": 0,
    "B>A": -1,
    "B>>A": -2,
    "B>>>A": -3,
}

# About 1,500-1,700 tokens of English at 3.5-4 characters a token: the whole judge prompt then fits
# Qwen2.5-1.5B-Instruct's ~2,048-token serving context with room for its chat template and 64 output tokens.
DEFAULT_MAX_CHARS = 6000
TRUNCATED = "\n[... truncated]"

SYSTEM_PROMPT = (
    "You are a fair judge. Compare two answers to the same user prompt. "
    "Prefer the answer that is more correct, helpful and relevant; do not prefer an answer for its position "
    "or its length."
)
USER_TEMPLATE = """[User prompt]
{prompt}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? Choose one verdict:
[[A>>>B]] A is much better
[[A>>B]] A is clearly better
[[A>B]] A is slightly better
[[A=B]] tie
[[B>A]] B is slightly better
[[B>>A]] B is clearly better
[[B>>>A]] B is much better
Keep any reasoning to one short sentence, then write the verdict alone on the last line."""

_VERDICT = r"([AB])\s*(>{1,3}|=)\s*([AB])"
# `\[\[?` / `\]\]?`: small models often drop one bracket of the pair.
_BRACKETED = re.compile(r"\[\[?\s*" + _VERDICT + r"\s*\]\]?")
# A bare last line, optionally labelled and wrapped in markdown emphasis or code ticks.
_BARE_LINE = re.compile(r"(?:(?:final\s+)?verdict\s*:)?[\s*`]*" + _VERDICT + r"[\s*`.]*", re.IGNORECASE)
# The scale's own wording as the reply's opening ("B is clearly better. Answer B ..."): a 1.5B judge
# answered so in 4 of 6 Arena-Hard pairs, verdict first, with no tag at all.
_WORDED = re.compile(r"[\s*`]*(?:answer\s+)?([AB])\s+is\s+(much|clearly|slightly)\s+better\b", re.IGNORECASE)
_WORDED_TIE = re.compile(r"[\s*`]*(?:it'?s\s+a\s+)?tie\b", re.IGNORECASE)
_WORDED_STRENGTH = {"much": 3, "clearly": 2, "slightly": 1}


def _score(left: str, operator: str, right: str) -> int | None:
    """Score of one matched verdict from A's side; None for nonsense such as `A>A`."""
    if left == right:
        return None
    if operator == "=":
        return 0
    return len(operator) if left == "A" else -len(operator)


def parse_verdict(text: str) -> int | None:
    """A's score (+3..-3) from the judge's reply: the last bracketed verdict, else a bare verdict line."""
    # The last one wins: a judge that restates the scale or changes its mind ends with its real verdict.
    for match in reversed(list(_BRACKETED.finditer(text))):
        score = _score(match.group(1), match.group(2), match.group(3))
        if score is not None:
            return score
    lines = [line for line in text.splitlines() if line.strip()]
    bare = _BARE_LINE.fullmatch(lines[-1].strip()) if lines else None
    if bare:
        return _score(bare.group(1).upper(), bare.group(2), bare.group(3).upper())
    return _worded_verdict(lines[0]) if lines else None


def _worded_verdict(first_line: str) -> int | None:
    """A's score from a reply that opens with the scale's words: "B is clearly better", "Tie"."""
    if _WORDED_TIE.match(first_line):
        return 0
    worded = _WORDED.match(first_line)
    if worded is None:
        return None
    strength = _WORDED_STRENGTH[worded.group(2).lower()]
    return strength if worded.group(1).upper() == "A" else -strength


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATED):
        return text[:limit]
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def _shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Split a character budget: short texts keep everything, the longer ones share the rest evenly."""
    shares = [0] * len(lengths)
    remaining = budget
    for position, index in enumerate(sorted(range(len(lengths)), key=lengths.__getitem__)):
        shares[index] = min(lengths[index], remaining // (len(lengths) - position))
        remaining -= shares[index]
    return shares


def _overhead() -> int:
    return len(SYSTEM_PROMPT) + len(USER_TEMPLATE.format(prompt="", answer_a="", answer_b=""))


def judge_messages(
    prompt: str, answer_a: str, answer_b: str, *, max_chars: int = DEFAULT_MAX_CHARS
) -> list[dict[str, str]]:
    """The judge's chat messages, with the three texts truncated so the whole prompt fits `max_chars`."""
    budget = max_chars - _overhead()
    if budget <= 0:
        raise ValueError(f"max_chars={max_chars} leaves no room beside the judge's own {_overhead()} characters")
    texts = (prompt.strip(), answer_a.strip(), answer_b.strip())
    clipped = [_clip(text, share) for text, share in zip(texts, _shares([len(t) for t in texts], budget), strict=True)]
    user = USER_TEMPLATE.format(prompt=clipped[0], answer_a=clipped[1], answer_b=clipped[2])
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class PairVerdict:
    """The judge's view of one candidate answer against the baseline's, from the candidate's side."""

    candidate_as_a: int | None  # the verdict with the candidate shown first
    candidate_as_b: int | None  # the verdict with the candidate shown second, negated to the candidate's side
    score: float | None  # mean of the parsed verdicts, -3..+3; None when neither parsed
    outcome: Outcome
    outputs: tuple[str, ...] = ()  # the judge's raw replies, for the report; empty when no call was needed


def _outcome(score: float | None) -> Outcome:
    if score is None:
        return "unparsed"
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def combine(candidate_as_a: int | None, candidate_as_b: int | None, outputs: tuple[str, ...] = ()) -> PairVerdict:
    """One verdict from the two orders; an order the judge did not answer readably is left out."""
    parsed = [score for score in (candidate_as_a, candidate_as_b) if score is not None]
    score = sum(parsed) / len(parsed) if parsed else None
    return PairVerdict(candidate_as_a, candidate_as_b, score, _outcome(score), outputs)


def judge_pair(
    call: JudgeCall, prompt: str, candidate: str, baseline: str, *, max_chars: int = DEFAULT_MAX_CHARS
) -> PairVerdict:
    """Judge the candidate's answer against the baseline's, once in each order."""
    if candidate.strip() == baseline.strip():
        # The same answer cannot be better than itself; also saves two calls when the cheap tier replays
        # the cached answer word for word.
        return combine(0, 0)
    # LLM judges favour one position (often the first) regardless of content (Zheng et al. 2023, MT-Bench
    # §3.3); asking in both orders and averaging cancels a judge that only follows position.
    first = call(judge_messages(prompt, candidate, baseline, max_chars=max_chars))
    second = call(judge_messages(prompt, baseline, candidate, max_chars=max_chars))
    as_b = parse_verdict(second)
    return combine(parse_verdict(first), None if as_b is None else -as_b, (first, second))


def pair_quality(verdict: PairVerdict) -> float | None:
    """The verdict as a 0-1 quality (win 1, tie 0.5, loss 0); its mean over judged items is the win rate."""
    return {"win": 1.0, "tie": 0.5, "loss": 0.0}.get(verdict.outcome)


@dataclass(frozen=True)
class WinRate:
    """Outcome counts against the baseline; `rate` is the 0-1 quality (the baseline against itself: 0.5)."""

    wins: int
    ties: int
    losses: int
    unparsed: int
    judged: int  # wins + ties + losses: unparsed pairs say nothing either way, so they are left out
    rate: float | None  # (wins + ties / 2) / judged, as Arena-Hard counts ties; None when nothing was judged


def win_rate(verdicts: Iterable[PairVerdict]) -> WinRate:
    """Count outcomes and the win rate, a tie counting half."""
    outcomes = [verdict.outcome for verdict in verdicts]
    wins, ties, losses = (outcomes.count(outcome) for outcome in ("win", "tie", "loss"))
    judged = wins + ties + losses
    rate = (wins + ties / 2) / judged if judged else None
    return WinRate(wins, ties, losses, outcomes.count("unparsed"), judged, rate)


@runtime_checkable
class _HasCompletion(Protocol):
    """A litellm `Router` (or the `litellm` module itself): anything with a `completion` method."""

    def completion(self, *, model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> Any: ...


def litellm_judge_call(
    router_or_completion: _HasCompletion | Callable[..., Any], model: str, max_tokens: int = 64
) -> JudgeCall:
    """A JudgeCall over a litellm Router (or a `completion` function); litellm is never imported here."""
    completion = (
        router_or_completion.completion if isinstance(router_or_completion, _HasCompletion) else router_or_completion
    )

    def call(messages: list[dict[str, str]]) -> str:
        # temperature 0: the same pair gets the same verdict when the benchmark is rerun.
        response = completion(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        content = response.choices[0].message.content
        return content if isinstance(content, str) else ""

    return call
