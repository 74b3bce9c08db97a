"""The pairwise judge: verdict parsing, both-order judging, truncation and the win rate, with fake judges."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from echolm_middleware.quality_target.judge import (
    DEFAULT_MAX_CHARS,
    TRUNCATED,
    PairVerdict,
    combine,
    judge_messages,
    judge_pair,
    litellm_judge_call,
    pair_quality,
    parse_verdict,
    win_rate,
)

PROMPT = "Explain why the sky is blue."
GOOD = "Rayleigh scattering: shorter wavelengths scatter more off air molecules."
POOR = "Because it reflects the ocean."


class FakeJudge:
    """Answers from a script per call (cycling), and keeps every message list it was sent."""

    def __init__(self, *replies: str) -> None:
        self.replies = replies
        self.sent: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> str:
        self.sent.append(messages)
        return self.replies[(len(self.sent) - 1) % len(self.replies)]


def answers_shown(messages: list[dict[str, str]]) -> tuple[str, str]:
    user = messages[-1]["content"]
    match = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich answer", user, re.DOTALL)
    assert match is not None
    return match.group(1), match.group(2)


def content_judge(favourite: str, strength: str = ">>") -> Callable[[list[dict[str, str]]], str]:
    """A judge that reads the answers and prefers `favourite` wherever it is shown."""

    def call(messages: list[dict[str, str]]) -> str:
        answer_a, _ = answers_shown(messages)
        return f"[[A{strength}B]]" if answer_a == favourite else f"[[B{strength}A]]"

    return call


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("[[A>>>B]]", 3),
        ("[[A>>B]]", 2),
        ("[[A>B]]", 1),
        ("[[A=B]]", 0),
        ("[[B>A]]", -1),
        ("[[B>>A]]", -2),
        ("[[B>>>A]]", -3),
    ],
)
def test_every_scale_point_parses(text: str, score: int) -> None:
    assert parse_verdict(f"A is shorter but B is right.\nMy final verdict is {text}") == score


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Verdict: [[ B >> A ]]", -2),
        ("[A>B]", 1),
        ("[[A>>B]", 2),
        ("B is more accurate.\nB>>>A", -3),
        ("Both are fine.\nA=B", 0),
        ("Reasoning here.\n**A>B**", 1),
        ("Reasoning here.\nVerdict: B>A.", -1),
        ("Reasoning here.\n`a>>b`", 2),
    ],
)
def test_tolerated_variants_parse(text: str, score: int) -> None:
    assert parse_verdict(text) == score


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("B is clearly better. Answer B provides a step-by-step guide", -2),
        ("A is clearly better\n\nBoth answers are correct, but the first", 2),
        ("**A is much better**", 3),
        ("Answer B is slightly better because", -1),
        ("Tie. Both answers say the same.", 0),
    ],
)
def test_a_reply_that_opens_with_the_scales_words_parses(text: str, score: int) -> None:
    # How the bench's 1.5B judge answered 4 of 6 Arena-Hard pairs: no tag, the verdict in words first.
    assert parse_verdict(text) == score


@pytest.mark.parametrize(
    "text",
    [
        "Answer B explains more, so B is clearly better.",  # worded verdicts count only as the opening
        "A is better in places.",  # no strength from the scale
        "Tiered answers are hard to compare.",
    ],
)
def test_worded_verdicts_off_the_scale_or_not_opening_are_unparsed(text: str) -> None:
    assert parse_verdict(text) is None


def test_the_last_verdict_wins() -> None:
    text = "At first glance [[A>>B]], but A has a factual error, so [[B>A]]."
    assert parse_verdict(text) == -1
    assert parse_verdict("[[A>B]] hmm\n[[A=B]]\n[[B>>>A]]") == -3


def test_a_nonsense_verdict_is_skipped_for_the_one_before_it() -> None:
    assert parse_verdict("[[B>>A]] ... [[A>A]]") == -2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "Both answers have merits.",
        "[[C>A]]",
        "[[A>>>>B]]",
        "A>>B is what I would say, but let me think again.",
        "[[A<B]]",
        "[[A≈B]]",
    ],
)
def test_garbage_is_unparsed(text: str) -> None:
    assert parse_verdict(text) is None


def test_both_orders_are_asked_with_the_candidate_first_then_second() -> None:
    judge = FakeJudge("[[A>B]]")
    judge_pair(judge, PROMPT, GOOD, POOR)
    assert [answers_shown(messages) for messages in judge.sent] == [(GOOD, POOR), (POOR, GOOD)]
    assert all(PROMPT in messages[-1]["content"] for messages in judge.sent)
    assert [message["role"] for message in judge.sent[0]] == ["system", "user"]


def test_a_judge_that_only_follows_position_cancels_to_a_tie() -> None:
    judge = FakeJudge("[[A>B]]")
    verdict = judge_pair(judge, PROMPT, GOOD, POOR)
    assert verdict == PairVerdict(1, -1, 0.0, "tie", ("[[A>B]]", "[[A>B]]"))


def test_a_judge_preferring_the_candidate_in_both_orders_gives_a_win() -> None:
    verdict = judge_pair(content_judge(GOOD), PROMPT, GOOD, POOR)
    assert (verdict.candidate_as_a, verdict.candidate_as_b, verdict.score, verdict.outcome) == (2, 2, 2.0, "win")


def test_a_judge_preferring_the_baseline_gives_a_loss() -> None:
    verdict = judge_pair(content_judge(GOOD, ">>>"), PROMPT, POOR, GOOD)
    assert (verdict.candidate_as_a, verdict.candidate_as_b, verdict.score, verdict.outcome) == (-3, -3, -3.0, "loss")


def test_position_bias_weakens_but_does_not_flip_a_real_preference() -> None:
    # Strongly prefers A always, and mildly the good answer: +3 as A, then -3 + 1 as B.
    judge = FakeJudge("[[A>>>B]]", "[[A>>B]]")
    verdict = judge_pair(judge, PROMPT, GOOD, POOR)
    assert (verdict.score, verdict.outcome) == (0.5, "win")


def test_one_unparsed_order_leaves_the_other_to_decide() -> None:
    verdict = judge_pair(FakeJudge("I cannot decide.", "[[B>A]]"), PROMPT, GOOD, POOR)
    assert (verdict.candidate_as_a, verdict.candidate_as_b, verdict.score, verdict.outcome) == (None, 1, 1.0, "win")
    verdict = judge_pair(FakeJudge("[[B>>A]]", "no idea"), PROMPT, GOOD, POOR)
    assert (verdict.candidate_as_a, verdict.candidate_as_b, verdict.score, verdict.outcome) == (-2, None, -2.0, "loss")


def test_both_orders_unparsed_is_unparsed_and_left_out_of_the_rate() -> None:
    unparsed = judge_pair(FakeJudge("hmm", "well"), PROMPT, GOOD, POOR)
    assert (unparsed.score, unparsed.outcome, unparsed.outputs) == (None, "unparsed", ("hmm", "well"))
    assert pair_quality(unparsed) is None
    win = judge_pair(content_judge(GOOD), PROMPT, GOOD, POOR)
    rate = win_rate([unparsed, win, unparsed])
    assert (rate.wins, rate.unparsed, rate.judged, rate.rate) == (1, 2, 1, 1.0)


def test_identical_answers_are_a_tie_without_a_call() -> None:
    judge = FakeJudge("[[A>>>B]]")
    verdict = judge_pair(judge, PROMPT, f"  {GOOD}\n", GOOD)
    assert judge.sent == []
    assert verdict == PairVerdict(0, 0, 0.0, "tie", ())


def test_different_answers_are_judged() -> None:
    judge = FakeJudge("[[A=B]]")
    judge_pair(judge, PROMPT, GOOD, GOOD + " Also at sunset it turns red.")
    assert len(judge.sent) == 2


def message_chars(messages: list[dict[str, str]]) -> int:
    return sum(len(message["content"]) for message in messages)


@pytest.mark.parametrize("max_chars", [1500, 3000, DEFAULT_MAX_CHARS])
def test_truncation_keeps_the_judge_prompt_within_the_budget(max_chars: int) -> None:
    long_prompt, long_a, long_b = "p" * 9000, "a" * 20000, "b" * 5000
    messages = judge_messages(long_prompt, long_a, long_b, max_chars=max_chars)
    assert max_chars - 3 <= message_chars(messages) <= max_chars
    answer_a, answer_b = answers_shown(messages)
    assert answer_a.endswith(TRUNCATED) and answer_b.endswith(TRUNCATED)
    # Both answers are cut to the same length, so neither looks shorter for being cut harder.
    assert len(answer_a) == len(answer_b)


def test_short_texts_keep_everything_and_give_their_room_to_a_long_one() -> None:
    messages = judge_messages(PROMPT, GOOD, "b" * 50000, max_chars=2000)
    user = messages[-1]["content"]
    answer_a, answer_b = answers_shown(messages)
    assert PROMPT in user and answer_a == GOOD
    assert answer_b.endswith(TRUNCATED) and len(answer_b) > 1000
    assert message_chars(messages) <= 2000


def test_texts_within_the_budget_are_untouched() -> None:
    messages = judge_messages(PROMPT, GOOD, POOR)
    assert answers_shown(messages) == (GOOD, POOR)
    assert TRUNCATED not in messages[-1]["content"]


def test_judge_pair_passes_the_budget_on() -> None:
    judge = FakeJudge("[[A=B]]")
    judge_pair(judge, PROMPT, "x" * 10000, "y" * 10000, max_chars=2500)
    assert [message_chars(messages) <= 2500 for messages in judge.sent] == [True, True]


def test_a_budget_smaller_than_the_template_is_refused() -> None:
    with pytest.raises(ValueError, match="max_chars=100"):
        judge_messages(PROMPT, GOOD, POOR, max_chars=100)


def test_win_rate_counts_ties_as_half() -> None:
    verdicts = [combine(2, 1), combine(1, 1), combine(0, 0), combine(-1, -2), combine(None, None), combine(1, -1)]
    rate = win_rate(verdicts)
    assert (rate.wins, rate.ties, rate.losses, rate.unparsed, rate.judged) == (2, 2, 1, 1, 5)
    assert rate.rate == pytest.approx(0.6)
    qualities = [pair_quality(verdict) for verdict in verdicts]
    assert qualities == [1.0, 1.0, 0.5, 0.0, None, 0.5]
    judged = [quality for quality in qualities if quality is not None]
    assert sum(judged) / len(judged) == pytest.approx(rate.rate)


def test_the_baseline_against_itself_scores_one_half() -> None:
    judge = FakeJudge("[[A>>B]]")
    rate = win_rate([judge_pair(judge, PROMPT, answer, answer) for answer in (GOOD, POOR)])
    assert rate.rate == 0.5


def test_win_rate_of_nothing_judged_is_none() -> None:
    assert win_rate([]).rate is None
    empty = win_rate([combine(None, None)])
    assert (empty.judged, empty.unparsed, empty.rate) == (0, 1, None)


def response(content: str | None) -> Any:
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content))])


class FakeRouter:
    """Stands in for litellm.Router: keeps each completion's keyword arguments."""

    def __init__(self, content: str | None) -> None:
        self.content = content
        self.calls: list[dict[str, Any]] = []

    def completion(self, *, model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> Any:
        self.calls.append({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature})
        return response(self.content)


def test_litellm_judge_call_asks_the_router_deterministically() -> None:
    router = FakeRouter("[[B>A]]")
    call = litellm_judge_call(router, "judge-model")
    messages = judge_messages(PROMPT, GOOD, POOR)
    assert call(messages) == "[[B>A]]"
    assert router.calls == [{"model": "judge-model", "messages": messages, "max_tokens": 64, "temperature": 0}]


def test_litellm_judge_call_takes_a_completion_function_and_empty_content() -> None:
    seen: list[dict[str, Any]] = []

    def completion(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return response(None)

    call = litellm_judge_call(completion, "judge-model", max_tokens=16)
    assert call([{"role": "user", "content": "hi"}]) == ""
    assert (seen[0]["model"], seen[0]["max_tokens"], seen[0]["temperature"]) == ("judge-model", 16, 0)


def test_the_judge_module_does_not_import_litellm() -> None:
    code = "import sys, echolm_middleware.quality_target.judge; sys.exit('litellm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
