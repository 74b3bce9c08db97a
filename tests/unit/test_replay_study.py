"""The replay study (`echolm answers --replay-study`): sampled pool answers kept and resumed, and the answer
the upkeep's replay would keep scored against the greedy one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, POOL, STRONG, Answer, AnswersTable
from echolm_lab.bench.replay_study import (
    PICKED,
    SAMPLE_TEMPERATURE,
    ask_planned,
    items_to_sample,
    missing_samples,
    planned_picks,
    record_samples,
    replay_effect,
    sample_seed,
    samples_path,
)
from echolm_lab.bench.table_build import Endpoint, TableWorkload
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord
from echolm_middleware.core.answer_pick import distinct_answers

POOL_ITEMS = [QARecord("capital of france?", ("paris",)), QARecord("capital of spain?", ("madrid",))]
REQUESTS = [QARecord("france's capital?", ("paris",)), QARecord("spain's capital city?", ("madrid",))]
WORKLOAD = Workload(
    name="toy", items=POOL_ITEMS, system_prompt="Answer briefly.", metric="exact_match",
    score=lambda answer, item: float(answer.strip().lower() in item.references), max_tokens=8,
)  # fmt: skip
SOURCE = TableWorkload(WORKLOAD, POOL_ITEMS, REQUESTS)
ENDPOINTS = [
    Endpoint("strong", "http://127.0.0.1:1/v1", "m", "sha", "v1"),
    Endpoint("strong", "http://127.0.0.1:2/v1", "m", "sha", "v1"),
]


def word_embed(texts: Sequence[str]) -> list[list[float]]:
    """One dimension per answer word: equal answers embed equal, different ones orthogonal."""
    words = ["paris", "lyon", "madrid", "rome"]
    return [[float(text.strip().lower() == word) for word in words] for text in texts]


def _line(item: str, choice: str, answer: str) -> Answer:
    return Answer(
        key=f"{choice}:{item}", workload="toy", item=item, choice=choice, tier="strong", model_sha256="sha",
        server_version="v1", messages=[], system_sha256="", params={}, answer=answer, finish_reason="stop",
        prompt_tokens=1, completion_tokens=1, latency_s=0.1,
    )  # fmt: skip


def test_each_sample_is_asked_once_with_a_seed_of_its_own_and_a_rerun_asks_nothing(tmp_path: Path) -> None:
    calls: list[tuple[str, int, float]] = []

    def asker(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        calls.append((messages[-1]["content"], params["seed"], params["temperature"]))
        return {
            "answer": "paris",
            "finish_reason": "stop",
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "latency_s": 0.01,
        }

    table = AnswersTable(tmp_path / "toy.samples.jsonl")
    prompts = [item.prompt for item in POOL_ITEMS]
    assert record_samples(SOURCE, prompts, table, ENDPOINTS, per_item=3, asker=asker) == 6
    assert sorted((prompt, seed) for prompt, seed, _ in calls) == sorted(
        (prompt, sample_seed(prompt, sample)) for prompt in prompts for sample in (1, 2, 3)
    )
    assert len({seed for _, seed, _ in calls}) == 6  # no two items, no two samples share their random draws
    assert {temperature for _, _, temperature in calls} == {SAMPLE_TEMPERATURE}
    assert len(table) == 6 and {a.system_sha256 for a in table.answers()} != {""}  # the system prompt, hashed

    again = AnswersTable(tmp_path / "toy.samples.jsonl")  # read back from disk, as a resumed run would
    assert missing_samples(SOURCE, prompts, again, ENDPOINTS[0], per_item=3) == 0
    assert missing_samples(SOURCE, prompts, again, ENDPOINTS[0], per_item=4) == 2  # sample 4 of each
    assert record_samples(SOURCE, prompts, again, ENDPOINTS, per_item=3, asker=asker) == 0
    assert len(calls) == 6


def test_the_kept_answer_is_the_samples_majority_and_scores_the_reused_requests(tmp_path: Path) -> None:
    france, spain = (item.prompt for item in POOL_ITEMS)
    answers = [
        _line(france, POOL, "lyon"),  # a wrong greedy answer the samples outvote
        _line(spain, POOL, "madrid"),  # a right one that a stray sample cannot displace
        _line(REQUESTS[0].prompt, STRONG, "paris"),
        _line(REQUESTS[1].prompt, STRONG, "madrid"),
    ]
    samples = AnswersTable(tmp_path / "s.jsonl")
    replies = {france: ["paris", "paris", "rome"], spain: ["rome", "madrid", "madrid"]}

    def asker(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        prompt = messages[-1]["content"]
        sample = next(i for i in (1, 2, 3) if sample_seed(prompt, i) == params["seed"])
        answer = replies[prompt][sample - 1]
        return {
            "answer": answer,
            "finish_reason": "stop",
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "latency_s": 0.01,
        }

    record_samples(SOURCE, [france, spain], samples, ENDPOINTS[:1], per_item=3, asker=asker)
    served = {france: [REQUESTS[0].prompt], spain: [REQUESTS[1].prompt]}

    effect = replay_effect(SOURCE, answers, samples.answers(), served, word_embed, per_item=3)

    assert (effect.items, effect.changed) == (2, 1)
    assert (effect.pool.old, effect.pool.new) == (0.5, 1.0)
    assert (effect.reused.n, effect.reused.old, effect.reused.new) == (2, 0.5, 1.0)
    assert effect.strong_on_reused == 1.0
    # france: lyon, paris, paris, rome votes paris; spain: madrid, rome, madrid, madrid votes madrid.
    assert (effect.vote.old, effect.vote.new) == (0.5, 1.0)
    assert effect.one_sample.new == 0.5  # sample 1 alone: paris (right), rome (wrong)
    assert effect.best_of.new == 1.0


def test_an_item_missing_samples_or_a_sample_cut_short_is_handled_as_the_replay_would(tmp_path: Path) -> None:
    france, spain = (item.prompt for item in POOL_ITEMS)
    answers = [_line(france, POOL, "lyon"), _line(spain, POOL, "madrid")]
    samples = AnswersTable(tmp_path / "s.jsonl")

    def asker(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        # "paris" twice, but cut at max_tokens: the replay keeps only answers that ended on their own.
        return {
            "answer": "paris",
            "finish_reason": "length",
            "prompt_tokens": 3,
            "completion_tokens": 8,
            "latency_s": 0.01,
        }

    record_samples(SOURCE, [france], samples, ENDPOINTS[:1], per_item=2, asker=asker)
    served = {france: [REQUESTS[0].prompt], spain: [REQUESTS[1].prompt]}

    effect = replay_effect(SOURCE, answers, samples.answers(), served, word_embed, per_item=2)

    assert (effect.items, effect.changed) == (1, 0)  # spain has no samples; france keeps its greedy answer
    assert effect.pool.new == effect.pool.old == 0.0
    assert effect.reused.n == 0  # no strong answer in the table for the request


def _reply(answer: str) -> dict[str, Any]:
    return {"answer": answer, "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1, "latency_s": 0.01}


def test_the_judge_is_asked_only_where_answers_differ_and_its_pick_is_scored(tmp_path: Path) -> None:
    france, spain = (item.prompt for item in POOL_ITEMS)
    answers = [
        _line(france, POOL, "lyon"),
        _line(spain, POOL, "madrid"),
        _line(REQUESTS[0].prompt, STRONG, "paris"),
        _line(REQUESTS[1].prompt, STRONG, "madrid"),
    ]
    samples = AnswersTable(tmp_path / "s.jsonl")
    # france: lyon (greedy), lyon, paris: the medoid and the vote keep lyon; spain: madrid throughout.
    replies = {france: ["lyon", "paris"], spain: ["madrid", "madrid"]}

    def sampler(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        prompt = messages[-1]["content"]
        return _reply(replies[prompt][next(i for i in (1, 2) if sample_seed(prompt, i) == params["seed"]) - 1])

    record_samples(SOURCE, [france, spain], samples, ENDPOINTS[:1], per_item=2, asker=sampler)
    served = {france: [REQUESTS[0].prompt], spain: [REQUESTS[1].prompt]}
    picks = planned_picks(SOURCE, answers, samples.answers(), [france, spain], ENDPOINTS[0], per_item=2)
    assert [pick.prompt for pick in picks] == [france]  # spain's answers agree: no judge needed
    asked: list[list[dict[str, Any]]] = []

    def judge(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        asked.append(messages)
        return _reply("2")  # the second listed: paris

    before = replay_effect(SOURCE, answers, samples.answers(), served, word_embed, per_item=2, reference=ENDPOINTS[0])
    assert before.judged is None and before.judge_asked == 1  # the judge's reply is not in yet
    assert ask_planned(SOURCE, picks, samples, ENDPOINTS, asker=judge) == 1
    assert asked[0][0] == {"role": "system", "content": "Answer briefly."}  # under the question's own instructions
    assert "1. lyon\n2. paris" in asked[0][-1]["content"]  # the greedy's answer leads: given twice
    assert [a.choice for a in samples.answers()].count(PICKED) == 1
    assert ask_planned(SOURCE, picks, samples, ENDPOINTS, asker=judge) == 0  # kept: a rerun asks nothing

    effect = replay_effect(SOURCE, answers, samples.answers(), served, word_embed, per_item=2, reference=ENDPOINTS[0])

    assert effect.pool.new == 0.5 and effect.vote.new == 0.5  # lyon kept for france by both
    assert effect.judged is not None and effect.judged_reused is not None
    assert (effect.judged.old, effect.judged.new) == (0.5, 1.0)
    assert (effect.judged_reused.old, effect.judged_reused.new) == (0.5, 1.0)
    assert (effect.judge_asked, effect.judge_unparsed) == (1, 0)


def test_a_judge_reply_naming_no_candidate_keeps_the_most_given_answer(tmp_path: Path) -> None:
    france = POOL_ITEMS[0].prompt
    answers = [_line(france, POOL, "lyon")]
    samples = AnswersTable(tmp_path / "s.jsonl")
    record_samples(SOURCE, [france], samples, ENDPOINTS[:1], per_item=1, asker=lambda *_: _reply("paris"))
    picks = planned_picks(SOURCE, answers, samples.answers(), [france], ENDPOINTS[0], per_item=1)
    ask_planned(SOURCE, picks, samples, ENDPOINTS, asker=lambda *_: _reply("I cannot tell."))

    effect = replay_effect(
        SOURCE, answers, samples.answers(), {france: []}, word_embed, per_item=1, reference=ENDPOINTS[0]
    )

    assert effect.judge_unparsed == 1
    assert effect.judged is not None and effect.judged.new == 0.0  # lyon, the greedy, leads a split


def test_a_vote_compares_answers_up_to_case_spacing_and_a_final_dot_and_a_tie_keeps_the_first() -> None:
    # The study's plain vote is the most given of the distinct answers (`core.answer_pick`).
    assert distinct_answers(["Paris.", "lyon", " paris"])[0] == "Paris."
    assert distinct_answers(["lyon", "paris"])[0] == "lyon"
    assert distinct_answers(["lyon", "paris", "Paris"])[0] == "paris"


def test_items_reused_come_first_then_those_shown_most_as_examples_up_to_the_count() -> None:
    france, spain = (item.prompt for item in POOL_ITEMS)
    shown = [
        _line(REQUESTS[0].prompt, CHEAP_WITH_EXAMPLES, "paris"),
        _line(REQUESTS[1].prompt, CHEAP_WITH_EXAMPLES, "madrid"),
        _line("a question no request asked", CHEAP_WITH_EXAMPLES, "x"),  # a train item: not counted
    ]
    shown[0] = Answer(**{**shown[0].__dict__, "examples": [spain, "other pool item"]})
    shown[1] = Answer(**{**shown[1].__dict__, "examples": [spain]})
    shown[2] = Answer(**{**shown[2].__dict__, "examples": ["train-only example"] * 5})

    chosen = items_to_sample(SOURCE, shown, {france: [REQUESTS[0].prompt]}, 2)

    assert chosen == {france: [REQUESTS[0].prompt], spain: []}
    assert list(items_to_sample(SOURCE, shown, {}, 3)) == [spain, "other pool item"]


def test_the_cli_refuses_a_judged_workload_with_a_clear_error(capsys: Any) -> None:
    from echolm_middleware.cli import main as cli_main

    assert cli_main.main(["answers", "--workload", "arena_hard", "--replay-study"]) == 2
    assert "needs a reference metric; arena_hard is judged pairwise" in capsys.readouterr().err


def test_samples_are_kept_beside_the_answers_table() -> None:
    assert samples_path(Path("benchmarks/tables/banking77.jsonl")) == Path("benchmarks/tables/banking77.samples.jsonl")


def test_every_committed_judge_reply_names_one_of_its_candidates_by_number() -> None:
    """The README's count: 136 Banking77 and 112 NQ-open items asked, every reply a number in range."""
    import re

    for workload, asked in (("banking77", 136), ("nq_open", 112)):
        table = AnswersTable(samples_path(Path("benchmarks/tables") / f"{workload}.jsonl"))
        picks = [answer for answer in table.answers() if answer.choice == PICKED]
        assert len(picks) == asked
        for pick in picks:
            listed = re.findall(r"^(\d+)\. ", pick.messages[-1]["content"], flags=re.MULTILINE)
            assert pick.answer.strip() in listed
