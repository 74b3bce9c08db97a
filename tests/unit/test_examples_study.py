"""The examples study: the cheap tier's answers on the train items under a shortened selection of examples,
asked once and kept, the table's answers taken where the messages are the same, the effect paired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from echolm_lab.bench.answers_table import CHEAP, Answer, AnswersTable, answer_key
from echolm_lab.bench.examples_study import (
    DEFAULT,
    NONE_SHOWN,
    Shown,
    Variant,
    effects,
    examples_path,
    plan,
    record_variant,
)
from echolm_lab.bench.table_build import Endpoint, TableWorkload
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord
from echolm_middleware.config import Settings, StoreSettings, TierSettings
from tests.unit.conftest import WordCounter, WordHashEmbedder

CHEAP_SERVER = Endpoint("cheap", "http://cheap", "qwen2.5-0.5b", "sha-cheap", "llama-cpp-python 0.3.36")


def _source() -> TableWorkload:
    workload = Workload(
        name="capitals", items=[], system_prompt=None, metric="exact_match",
        score=lambda answer, item: float(answer == item.references[0]), max_tokens=8,
    )  # fmt: skip
    pool = [QARecord(f"capital of {country} {word}", (city,)) for country, city in (("france", "paris"),
            ("spain", "madrid")) for word in ("please", "now", "today")]  # fmt: skip
    train = [QARecord("capital of france", ("paris",)), QARecord("capital of spain", ("madrid",))]
    train.append(QARecord("tallest mountain", ("everest",)))  # nothing near it in the pool
    return TableWorkload(workload, pool, [], train=train)


def _settings() -> Settings:
    tiers = (TierSettings(name="cheap", cost_per_1k_tokens=0.1), TierSettings(name="strong", cost_per_1k_tokens=1.0))
    return Settings(tiers=tiers, store=StoreSettings(backend="memory"))


class CountingCheapTier:
    """Answers right only with at least two examples in the prompt; counts its calls and prompt words."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, endpoint: Endpoint, messages: list[dict[str, Any]], params: Any) -> dict[str, Any]:
        text = " ".join(str(m["content"]) for m in messages)
        self.calls.append(endpoint.api_base)
        shown = text.count("capital of")  # the question's own line, then one per example
        city = "paris" if "france" in text.split("\n")[-1] else "madrid"
        return {
            "answer": city if shown >= 3 else "unsure", "finish_reason": "stop",
            "prompt_tokens": len(text.split()), "completion_tokens": 1, "latency_s": 0.1 * len(text.split()),
        }  # fmt: skip


def _answered(messages: list[dict[str, Any]], reply: dict[str, Any]) -> Answer:
    return Answer(key=answer_key("sha-cheap", "v", messages, {}), workload="capitals", item="", choice=CHEAP,
                  tier="cheap", model_sha256="sha-cheap", server_version="v", messages=messages, system_sha256="",
                  params={}, **reply)  # fmt: skip


def test_a_shortened_selection_is_asked_once_paired_with_the_default_and_kept(tmp_path: Path) -> None:
    source, settings = _source(), _settings()
    pool = {item.prompt: item.references[0] for item in source.pool}
    embedder = WordHashEmbedder()
    planned = {
        v.name: plan(source, source.train, pool, v, settings, [], "strong", embedder=embedder, tokens=WordCounter())
        for v in (Variant(DEFAULT), Variant("k=1", k=1))
    }
    shown_default = [len(p.examples) for p in planned[DEFAULT]]
    shown_k1 = [len(p.examples) for p in planned["k=1"]]
    assert shown_default[:2] == [3, 3] and shown_k1[:2] == [1, 1]  # near questions: three examples, or one
    assert shown_default[2] == shown_k1[2] == 0  # nothing near "tallest mountain"
    assert planned[DEFAULT][0].nearest_similarity > 0.8 and planned[DEFAULT][2].nearest_similarity < 0.5

    # The table already holds the cheap tier's own answer to the question with nothing to show.
    table = AnswersTable(tmp_path / "capitals.jsonl")
    params = {"temperature": 0.0, "max_tokens": 8}
    item, plain = planned[DEFAULT][2].item, planned[DEFAULT][2].messages
    held = answer_key(CHEAP_SERVER.model_sha256, CHEAP_SERVER.server_version, plain, params)
    tier = CountingCheapTier()
    table.add(
        Answer(key=held, workload="capitals", item=item.prompt, choice=CHEAP, tier="cheap", model_sha256="sha-cheap",
               server_version="llama-cpp-python 0.3.36", messages=plain, system_sha256="", params=params,
               answer="everest", finish_reason="stop", prompt_tokens=2, completion_tokens=1, latency_s=0.2)
    )  # fmt: skip
    study = AnswersTable(examples_path(table.path))
    replica = Endpoint("cheap", "http://replica", "qwen2.5-0.5b", "sha-cheap", "llama-cpp-python 0.3.36")

    default, asked_default = record_variant(
        source, planned[DEFAULT], Variant(DEFAULT), table, study, [CHEAP_SERVER, replica], asker=tier
    )
    shortened, asked_k1 = record_variant(
        source, planned["k=1"], Variant("k=1", k=1), table, study, [CHEAP_SERVER, replica], asker=tier
    )

    assert (asked_default, asked_k1) == (2, 2)  # "tallest mountain" taken from the table both times
    assert study.path.name == "capitals.examples.jsonl" and len(AnswersTable(study.path)) == 4
    kept = [a for a in AnswersTable(study.path).answers() if a.choice == "cheap+examples k=1"]
    assert sorted(len(a.examples) for a in kept) == [1, 1] and kept[0].examples[0].startswith("capital of")
    again, asked_again = record_variant(
        source, planned["k=1"], Variant("k=1", k=1), table, AnswersTable(study.path), [CHEAP_SERVER], asker=tier
    )
    assert asked_again == 0 and [s.answer.answer for s in again] == [s.answer.answer for s in shortened]

    (overall, *bars) = effects(default, shortened, source.workload.score)  # type: ignore[arg-type]
    assert overall.items == 3 and overall.changed == 2
    assert (overall.quality_default, overall.quality_variant) == (pytest.approx(1.0), pytest.approx(1 / 3))
    assert overall.difference == pytest.approx(-2 / 3)
    assert overall.prompt_tokens_variant < overall.prompt_tokens_default
    assert [e.bar for e in bars] == [0.8] and bars[0].items == 2  # the two near questions only


def test_the_cli_refuses_a_study_it_cannot_run_with_a_clear_error(capsys: Any) -> None:
    from echolm_middleware.cli import main as cli_main

    assert cli_main.main(["answers", "--workload", "arena_hard", "--examples-study", "--examples-k", "1"]) == 2
    assert "needs a reference metric and train items; arena_hard has no metric" in capsys.readouterr().err
    held_out = ["answers", "--workload", "arena_hard", "--examples-study", "--examples-k", "1", "--examples-items"]
    assert cli_main.main([*held_out, "requests"]) == 2
    assert "needs a reference metric and requests; arena_hard has no metric" in capsys.readouterr().err
    assert cli_main.main(["answers", "--workload", "nq_open", "--examples-study"]) == 2
    assert "needs --examples-k, --examples-max-answer-chars or --examples-threshold" in capsys.readouterr().err


def test_a_lower_threshold_shows_examples_where_the_default_shows_none_and_is_paired_there() -> None:
    source, settings = _source(), _settings()
    source.train.append(QARecord("deepest ocean", ("pacific",)))  # a second question with nothing near it
    pool = {item.prompt: item.references[0] for item in source.pool}
    embedder = WordHashEmbedder()
    planned = {
        v.name: plan(source, source.train, pool, v, settings, [], "strong", embedder=embedder, tokens=WordCounter())
        for v in (Variant(DEFAULT), Variant("threshold 0", threshold=0.0))
    }
    assert [len(p.examples) for p in planned[DEFAULT]][2:] == [0, 0]  # utility below the configured 0.5
    assert all(len(p.examples) > 0 for p in planned["threshold 0"][2:])  # any candidate clears a bar of 0

    tier = CountingCheapTier()
    shown = {
        name: [
            Shown(
                p.item, len(p.examples), p.nearest_similarity, _answered(p.messages, tier(CHEAP_SERVER, p.messages, {}))
            )
            for p in items
        ]
        for name, items in planned.items()
    }
    found = effects(shown[DEFAULT], shown["threshold 0"], source.workload.score)  # type: ignore[arg-type]
    none_shown = next(e for e in found if e.bar == NONE_SHOWN)
    assert none_shown.items == 2 and none_shown.changed == 2  # only the far questions, both changed
    assert none_shown.prompt_tokens_variant > none_shown.prompt_tokens_default
