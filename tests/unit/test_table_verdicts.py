"""Verdicts for judged workloads: each other choice judged once against the strong tier's answer, both
orders, resumable; policies scored off them as win rates paired with strong-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, REUSE, STRONG, Answer
from echolm_lab.bench.table_build import Endpoint, TableWorkload
from echolm_lab.bench.table_policies import evaluate_policies
from echolm_lab.bench.table_verdicts import VerdictsTable, judged_scores, record_verdicts, verdicts_path
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord

JUDGE = Endpoint("strong", "http://strong", "qwen2.5-1.5b", "sha-strong", "llama-cpp-python 0.3.36")


def _source(n: int) -> TableWorkload:
    workload = Workload(name="chat", items=[], system_prompt=None, metric="judged", score=None, max_tokens=96)
    return TableWorkload(workload, [QARecord("pool prompt", ())], [QARecord(f"prompt {k}", ()) for k in range(n)])


def _answers(source: TableWorkload) -> list[Answer]:
    def line(item: str, choice: str, text: str) -> Answer:
        return Answer(
            key=f"{item}/{choice}", workload="chat", item=item, choice=choice, tier=choice, model_sha256="m",
            server_version="v", messages=[], system_sha256="", params={}, answer=text, finish_reason="stop",
            prompt_tokens=50, completion_tokens=50, latency_s=2.0 if choice == STRONG else 1.0,
        )  # fmt: skip

    rows = []
    for item in source.requests:
        rows += [line(item.prompt, STRONG, "good"), line(item.prompt, CHEAP, "bad")]
        rows.append(line(item.prompt, CHEAP_WITH_EXAMPLES, "good too"))
    return rows


class ScriptedJudge:
    """Prefers an answer with "good" in it, in whichever order it is shown; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        text = messages[-1]["content"]
        a = text.split("[Answer A]")[1].split("[Answer B]")[0]
        b = text.split("[Answer B]")[1].split("Which answer")[0]
        if ("good" in a) == ("good" in b):
            return "[[A=B]]"
        return "[[A>>B]]" if "good" in a else "[[B>>A]]"


def test_each_other_choice_is_judged_once_in_both_orders_and_a_rerun_asks_nothing(tmp_path: Path) -> None:
    source, judge = _source(4), ScriptedJudge()
    verdicts = VerdictsTable(verdicts_path(tmp_path / "chat.jsonl"))
    reused = {item.prompt: "bad reuse" for item in source.requests}

    asked = record_verdicts(source, _answers(source), verdicts, JUDGE, judge, extra={REUSE: reused})

    assert asked == {CHEAP: 4, CHEAP_WITH_EXAMPLES: 4, REUSE: 4}
    assert judge.calls == 3 * 4 * 2  # both orders
    assert verdicts.path.name == "chat.verdicts.jsonl"
    again = VerdictsTable(verdicts.path)
    assert record_verdicts(source, _answers(source), again, JUDGE, judge, extra={REUSE: reused}) == {}
    assert judge.calls == 24
    scores = judged_scores(again.records(), source.requests)
    assert scores["prompt 0"] == {STRONG: 0.5, CHEAP: 0.0, CHEAP_WITH_EXAMPLES: 0.5, REUSE: 0.0}


def test_a_judged_workloads_policies_are_win_rates_paired_with_strong_only(tmp_path: Path) -> None:
    source = _source(30)
    verdicts = VerdictsTable(tmp_path / "v.jsonl")
    record_verdicts(source, _answers(source), verdicts, JUDGE, ScriptedJudge())

    results = {r.score.policy: r for r in evaluate_policies(source, _answers(source), verdicts=verdicts.records())}

    assert results["strong-only"].score.quality == 0.5 and results["strong-only"].score.difference == 0.0
    cheap = results["cheap-only"].score
    assert (cheap.requests, cheap.quality, cheap.difference) == (30, 0.0, -0.5)
    assert results["cheap with examples for all"].score.difference == 0.0  # ties: as good as strong
    assert results["oracle over the three (a ceiling: reads the answers)"].score.shares == {
        CHEAP_WITH_EXAMPLES: pytest.approx(1.0)
    }
    # The cheap tier with examples at 1 s against the strong tier's 2 s: twice strong-only's rate on two slots.
    assert results["cheap with examples for all"].ceiling.elastic == 2.0
    assert evaluate_policies(source, _answers(source)) == []  # no verdicts: nothing to score a judged workload by


def test_a_choice_answering_word_for_word_as_another_shares_its_verdict(tmp_path: Path) -> None:
    """The cheap tier with no example worth showing answers as the cheap tier: one key, one judgement, and
    both choices are scored by it (else no request of such a workload would be complete)."""
    source, judge = _source(3), ScriptedJudge()
    answers = [
        a if a.choice != CHEAP_WITH_EXAMPLES else Answer(**{**a.__dict__, "answer": "bad"}) for a in _answers(source)
    ]
    verdicts = VerdictsTable(tmp_path / "v.jsonl")

    asked = record_verdicts(source, answers, verdicts, JUDGE, judge)

    assert asked == {CHEAP: 3} and judge.calls == 3 * 2
    scores = judged_scores(verdicts.records(), source.requests, answers)
    assert scores["prompt 0"] == {STRONG: 0.5, CHEAP: 0.0, CHEAP_WITH_EXAMPLES: 0.0}
    assert CHEAP_WITH_EXAMPLES not in judged_scores(verdicts.records(), source.requests)["prompt 0"]
    results = {r.score.policy: r for r in evaluate_policies(source, answers, verdicts=verdicts.records())}
    assert results["cheap with examples for all"].score.requests == 3


def test_a_live_answer_takes_the_tabled_verdict_when_it_is_the_tables_answer_and_is_judged_once_when_not(
    tmp_path: Path,
) -> None:
    from echolm_lab.bench.load import LoadPass
    from echolm_lab.bench.systems import Answered
    from echolm_lab.bench.table_bench import LivePass, by_item, score_pass
    from echolm_lab.bench.table_verdicts import LiveJudgement, live_verdicts_path

    source, judge = _source(4), ScriptedJudge()
    answers = _answers(source)
    tabled = VerdictsTable(verdicts_path(tmp_path / "chat.jsonl"))
    record_verdicts(source, answers, tabled, JUDGE, judge)
    judge.calls = 0
    table = by_item(answers)
    strong = {prompt: row[STRONG].answer for prompt, row in table.items()}
    live_table = VerdictsTable(live_verdicts_path(tmp_path / "chat.jsonl"))
    judgement = LiveJudgement(JUDGE, judge, tabled.records(), live_table, strong)
    items = source.requests
    answered = [
        Answered("good", "strong", 1.0, None),  # the table's strong answer: a tie, nothing asked
        Answered("bad", "cheap", 1.0, None),  # the table's cheap answer: its tabled loss
        Answered("good and new", "cheap", 1.0, None),  # never judged: asked now, a tie with "good"
        Answered("garbled", "cheap", 1.0, None),  # the judge cannot be read: left out
    ]
    load = LoadPass("echolm", "Poisson", answered, wall_s=10.0, rate_rps=1.0, arrivals_s=[0.0] * 4)
    live = LivePass("echolm", 1.0, load, items, [STRONG, CHEAP, CHEAP, CHEAP])

    def unreadable_on_garbled(messages: list[dict[str, str]]) -> str:
        return "no verdict" if "garbled" in messages[-1]["content"] else judge(messages)

    judgement.call = unreadable_on_garbled
    score_pass(live, table, judgement, {STRONG: 1.0, CHEAP: 0.1, CHEAP_WITH_EXAMPLES: 0.1})

    assert live.quality == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert live.difference == pytest.approx((0.0 - 0.5 + 0.0) / 3)  # paired with strong-only's tie
    assert live.unscored == 1
    assert judgement.asked == 2 and judge.calls == 2  # "good and new" in both orders; "garbled" unread
    assert live_table.path.name == "chat.live-verdicts.jsonl" and len(VerdictsTable(live_table.path)) == 2
    assert tabled.path.read_text().count("\n") == 8  # the table's own verdicts (4 requests x 2 choices) untouched

    again = LiveJudgement(JUDGE, judge, tabled.records(), VerdictsTable(live_table.path), strong)
    assert again("good and new", items[2]) == 0.5 and again.asked == 0  # kept: a rerun asks nothing


def test_a_live_answer_stripped_of_the_tables_trailing_whitespace_takes_the_tabled_verdict(tmp_path: Path) -> None:
    from dataclasses import replace

    from echolm_lab.bench.table_verdicts import LiveJudgement

    source, judge = _source(1), ScriptedJudge()
    answers = [replace(a, answer=a.answer + "\n\n  ") if a.choice == CHEAP else a for a in _answers(source)]
    tabled = VerdictsTable(tmp_path / "v.jsonl")
    record_verdicts(source, answers, tabled, JUDGE, judge)
    judge.calls = 0
    strong = {"prompt 0": "good"}
    texts = {"prompt 0": [a.answer for a in answers if a.choice != STRONG]}

    with_texts = LiveJudgement(JUDGE, judge, tabled.records(), VerdictsTable(tmp_path / "a.jsonl"), strong, texts)
    assert with_texts("bad", source.requests[0]) == 0.0 and with_texts.asked == 0 and judge.calls == 0
    without = LiveJudgement(JUDGE, judge, tabled.records(), VerdictsTable(tmp_path / "b.jsonl"), strong)
    assert without("bad", source.requests[0]) == 0.0 and without.asked == 1  # asked again for a byte's sake
