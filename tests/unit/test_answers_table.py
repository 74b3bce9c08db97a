"""The answers table: every choice answered once per request, resumable after a kill, pools disjoint from requests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, POOL, STRONG, AnswersTable
from echolm_lab.bench.table_build import Endpoint, TableWorkload, record_table, table_workload
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord, default_data_dir
from tests.unit.conftest import EngineFactory

DATA = default_data_dir()
STRONG_END = Endpoint("strong", "http://strong", "qwen2.5-1.5b", "sha-strong", "llama-cpp-python 0.3.36")
CHEAP_END = Endpoint("cheap", "http://cheap", "qwen2.5-0.5b", "sha-cheap", "llama-cpp-python 0.3.36")


class ScriptedServers:
    """Answers as each tier would, counting what it was asked; thread-safe like two real servers."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.asked[endpoint.group] += 1
        question = messages[-1]["content"]
        return {
            "answer": f"{endpoint.group} answer to: {question[-40:]}",
            "finish_reason": "stop",
            "prompt_tokens": len(str(messages).split()),
            "completion_tokens": 6,
            "latency_s": 0.01,
        }


def _source() -> TableWorkload:
    workload = Workload(
        name="capitals", items=[], system_prompt="Answer briefly.", metric="exact_match", score=None, max_tokens=16
    )
    pool = [QARecord(f"What is the capital of country number {n}?", ()) for n in range(6)]
    requests = [QARecord(f"what's the capital of country number {n}", ()) for n in range(4)]
    return TableWorkload(workload, pool, requests)


def _scored_source(train: list[QARecord] | None = None) -> TableWorkload:
    """`_source` with a metric: an answer is right when the strong tier gave it."""
    source = _source()
    scoring = Workload(
        name="capitals", items=[], system_prompt="Answer briefly.", metric="exact_match",
        score=lambda answer, item: float("strong" in answer), max_tokens=16,
    )  # fmt: skip
    return TableWorkload(scoring, source.pool, source.requests, train=train or [])


def test_each_request_is_answered_by_every_choice_and_the_pool_by_the_strong_tier(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    table, servers = AnswersTable(tmp_path / "t.jsonl"), ScriptedServers()

    asked = record_table(_source(), table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=servers)

    assert asked == {POOL: 6, STRONG: 4, CHEAP: 4, CHEAP_WITH_EXAMPLES: 4}
    assert servers.asked == {"strong": 10, "cheap": 8}
    with_examples = [a for a in table.answers() if a.choice == CHEAP_WITH_EXAMPLES]
    # Retrieval found each request's paraphrase in the pool, and the cheap tier was sent it.
    assert all(a.examples and "capital" in a.examples[0] for a in with_examples)
    assert all("strong answer to" in str(a.messages) for a in with_examples)
    assert all(a.params == {"temperature": 0.0, "max_tokens": 16} for a in table.answers())
    assert {a.model_sha256 for a in table.answers() if a.tier == "strong"} == {"sha-strong"}


def test_a_request_with_no_example_worth_showing_has_the_cheap_tiers_own_answer_as_that_choice(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    source = _source()
    lone = QARecord("zebra xylophone quartz", ())  # near nothing in the pool: no example is shown
    source = TableWorkload(source.workload, source.pool, [*source.requests, lone])
    table, servers = AnswersTable(tmp_path / "t.jsonl"), ScriptedServers()

    asked = record_table(source, table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=servers)

    assert servers.asked["cheap"] == 5 + 4  # the lone request is not asked twice
    assert asked[CHEAP_WITH_EXAMPLES] == 4
    rows = {a.choice: a for a in table.answers() if a.item == lone.prompt}
    assert set(rows) == {STRONG, CHEAP, CHEAP_WITH_EXAMPLES}
    assert rows[CHEAP_WITH_EXAMPLES].answer == rows[CHEAP].answer and rows[CHEAP_WITH_EXAMPLES].examples == []
    assert rows[CHEAP_WITH_EXAMPLES].key != rows[CHEAP].key
    # The report breaks the cheap tier's cost with examples down by how many were shown.
    from echolm_lab.bench.table_report import choice_costs

    costs = "\n".join(choice_costs(table.answers()))
    assert "| cheap+examples, 0 shown | 1 |" in costs and "| cheap+examples, 3 shown | 4 |" in costs
    # A rerun finds every choice held and asks nothing.
    again = record_table(source, AnswersTable(tmp_path / "t.jsonl"), make_engine().engine, strong=STRONG_END,
                         cheap=CHEAP_END, asker=servers)  # fmt: skip
    assert sum(again.values()) == 0


def test_a_killed_run_resumes_asking_only_what_is_missing(make_engine: EngineFactory, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    record_table(
        _source(), AnswersTable(path), make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=ScriptedServers()
    )
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]) + lines[-3][:25])  # the kill: two lines lost, one cut mid-way

    servers = ScriptedServers()
    table = AnswersTable(path)
    asked = record_table(_source(), table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=servers)

    assert sum(asked.values()) == 3 and sum(servers.asked.values()) == 3
    assert len(table) == 18 and len(AnswersTable(path)) == 18  # and the file reads back whole


def test_a_server_error_stops_the_run_with_what_was_answered_kept(make_engine: EngineFactory, tmp_path: Path) -> None:
    calls = ScriptedServers()

    def failing(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        if endpoint.group == "cheap" and calls.asked["cheap"] >= 2:
            raise ConnectionError("cheap tier down")
        return calls(endpoint, messages, params)

    table = AnswersTable(tmp_path / "t.jsonl")
    with pytest.raises(ConnectionError):
        record_table(_source(), table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=failing)
    assert Counter(a.choice for a in AnswersTable(tmp_path / "t.jsonl").answers())[CHEAP] == 2


@pytest.mark.parametrize(
    ("name", "pool", "requests", "train"),
    [("banking77", 5000, 1000, 1000), ("nq_open", 3610, 1000, 800), ("arena_hard", 250, 250, 0)],
)
def test_pools_requests_and_train_items_of_real_size_share_no_prompt(
    name: str, pool: int, requests: int, train: int
) -> None:
    source = table_workload(name, DATA, pool_size=pool, request_size=requests, train_size=train)

    pooled, asked, trained = ({item.prompt for item in items} for items in (source.pool, source.requests, source.train))
    assert not pooled & asked and not pooled & trained and not asked & trained
    assert len(source.train) == train
    # The same split with or without train items: a table built before them keeps its pool and requests.
    assert table_workload(name, DATA, pool_size=pool, request_size=requests).requests == source.requests
    if name == "arena_hard":  # one pool prompt and one request per topic cluster, the pool's taught by GPT-4
        assert len(source.pool) == len(source.requests) == 196
        assert source.teacher == "gpt-4-0314" and source.teacher_answers is not None
        assert all(item.prompt in source.teacher_answers for item in source.pool)
    else:
        assert (len(source.pool), len(source.requests)) == (pool, requests)


# ---- scoring a policy off the table -------------------------------------------------------------------


def _scored_table(tmp_path: Path, cheap_right: list[bool]) -> tuple[dict[str, dict[str, float]], Any]:
    from echolm_lab.bench.answers_table import Answer
    from echolm_lab.bench.table_scores import scores_by_choice

    workload = Workload(
        name="capitals", items=[], system_prompt=None, metric="exact_match",
        score=lambda answer, item: float(answer == item.references[0]), max_tokens=8,
    )  # fmt: skip
    requests = [QARecord(f"question {n}", ("right",)) for n in range(len(cheap_right))]
    answers = []
    for item, right in zip(requests, cheap_right, strict=True):
        for choice, text in ((STRONG, "right"), (CHEAP, "right" if right else "wrong"), (CHEAP_WITH_EXAMPLES, "right")):
            answers.append(
                Answer(key=f"{item.prompt}/{choice}", workload="capitals", item=item.prompt, choice=choice,
                       tier=choice, model_sha256="", server_version="", messages=[], system_sha256="", params={},
                       answer=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_s=0.1)
            )  # fmt: skip
    return scores_by_choice(answers, workload, requests), workload


def test_a_policys_quality_is_paired_with_strong_only_and_its_interval_covers_the_truth(tmp_path: Path) -> None:
    from echolm_lab.bench.table_scores import fixed, oracle, score_policy

    scored, _ = _scored_table(tmp_path, [n % 4 != 0 for n in range(400)])  # the cheap tier wrong on 1 in 4

    strong = score_policy("strong_only", fixed(STRONG), scored)
    cheap = score_policy("small_only", fixed(CHEAP), scored)
    ceiling = score_policy("oracle", oracle(scored), scored)

    assert (strong.quality, strong.difference, strong.interval) == (1.0, 0.0, (0.0, 0.0))
    assert cheap.requests == 400 and cheap.quality == 0.75 and cheap.difference == -0.25
    low, high = cheap.interval
    assert low < -0.25 < high and high - low < 0.1  # about +/-0.04 at n = 400
    assert cheap.shares == {CHEAP: pytest.approx(1.0)}
    # The ceiling: the cheap tier where it was right, its examples where it was not, never the strong tier.
    assert ceiling.difference == 0.0
    assert ceiling.shares == {CHEAP: pytest.approx(0.75), CHEAP_WITH_EXAMPLES: pytest.approx(0.25)}
    assert score_policy("again", fixed(CHEAP), scored).interval == cheap.interval  # seeded: reproducible


def test_the_report_prints_each_choices_cost_and_the_policies_quality(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    from echolm_lab.bench.table_report import table_report

    source = _scored_source()
    table = AnswersTable(tmp_path / "t.jsonl")
    record_table(source, table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=ScriptedServers())

    report = table_report(source, table.answers())

    assert "| strong | 4 |" in report and "| cheap+examples | 4 |" in report and "| pool | 6 |" in report
    assert "| strong-only | 1.000 | +0.000 (+0.000 to +0.000) | strong 100% | 0.50x | 1.00x |" in report
    assert "| cheap-only | 0.000 | -1.000 (-1.000 to -1.000) | cheap 100% |" in report
    assert "semantic cache" not in report  # no embedder given: no policy that needs retrieval

    def by_country(texts: Sequence[str]) -> list[list[float]]:
        return [[1.0 if text.rstrip("?").endswith(f" {n}") else 0.0 for n in range(6)] for text in texts]

    report = table_report(source, table.answers(), by_country, reuse_s=0.001)

    # Reused pool answers are the strong tier's own: as good as strong-only, at no model's cost.
    assert "| reuse for all (nearest pool answer) | 1.000 | +0.000 (+0.000 to +0.000) | reuse 100% |" in report
    assert "| semantic cache 0.9 | 1.000 |" in report and "| difficulty router, strong share 0.5 |" in report
    assert (
        "| oracle with reuse (a ceiling: reads the answers) | 1.000 | +0.000 (+0.000 to +0.000) | reuse 100% |"
        in report
    )


def test_train_items_are_answered_by_every_choice_after_the_requests(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    source = _source()
    train = [QARecord(f"capital of country number {n}, please", ()) for n in range(3)]
    source = TableWorkload(source.workload, source.pool, source.requests, train=train)
    table = AnswersTable(tmp_path / "t.jsonl")

    asked = record_table(
        source, table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=ScriptedServers()
    )

    assert (asked[POOL], asked[STRONG], asked[CHEAP]) == (6, 4 + 3, 4 + 3)
    for item in train:  # with examples where retrieval found some, else the cheap tier's own answer
        assert {a.choice for a in table.answers() if a.item == item.prompt} == {STRONG, CHEAP, CHEAP_WITH_EXAMPLES}
    # The cheap tier answers every request, with and without examples, before any train item.
    cheap_lines = [a.item for a in table.answers() if a.tier == "cheap"]
    requests, trained = {r.prompt for r in source.requests}, {t.prompt for t in train}
    assert max(i for i, item in enumerate(cheap_lines) if item in requests) < min(
        i for i, item in enumerate(cheap_lines) if item in trained
    )


def test_the_offload_study_fits_on_train_items_and_checks_on_the_requests(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    from echolm_lab.cli.answers import study

    source = _scored_source(train=[QARecord(f"capital of country number {n}, please", ()) for n in range(6)])
    table = AnswersTable(tmp_path / "t.jsonl")
    record_table(source, table, make_engine().engine, strong=STRONG_END, cheap=CHEAP_END, asker=ScriptedServers())

    lines, checked = study([(source, table.answers())], make_engine().embedder.embed)

    report = "\n".join(lines)
    assert set(checked) <= {"reuse", "cheap+examples"} and "cheap+examples" in checked
    assert checked["cheap+examples"].n == 4
    assert "- cheap+examples: fitted on 6 train items" in report
    assert "- checked on 4 capitals requests no fit saw" in report
    assert "| cheap+examples |" in report  # its weights and its check


def test_jobs_are_shared_by_the_endpoints_and_the_first_failure_stops_them_and_is_raised() -> None:
    import threading

    from echolm_lab.bench.table_build import Endpoint, on_each_endpoint

    servers = [Endpoint("cheap", f"http://{name}", "m", "sha", "v") for name in ("one", "two")]
    done: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handle(endpoint: Endpoint, job: int) -> None:
        with lock:
            done.append((endpoint.api_base, job))

    on_each_endpoint(list(range(20)), servers, handle)
    assert sorted(job for _, job in done) == list(range(20))  # each job once

    asked: list[int] = []

    def failing(endpoint: Endpoint, job: int) -> None:
        asked.append(job)
        if job == 3:
            raise RuntimeError("server gone")

    with pytest.raises(RuntimeError, match="server gone"):
        on_each_endpoint(list(range(100)), servers[:1], failing)
    assert asked == [0, 1, 2, 3]  # nothing after the failure
