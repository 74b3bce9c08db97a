"""`echolm bench`'s own logic: workloads and splits, the two baselines, load generation and the summary."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from echolm_lab.bench import report
from echolm_lab.bench.deployments import Deployment, widened
from echolm_lab.bench.load import LoadPass, closed_loop, open_loop
from echolm_lab.bench.runner import Bench, BenchOptions, SystemRun, WorkloadRun, point_overrides
from echolm_lab.bench.systems import CACHE_TIER, Answered, DifficultyRouter, ModelSystem, SemanticCache
from echolm_lab.bench.workloads import (
    JUDGED,
    Split,
    Workload,
    banking77,
    intent_of,
    load_workload,
    split_workload,
    user_file,
)
from echolm_lab.datasets import QARecord, default_data_dir
from echolm_middleware.errors import EchoLMError

DATA = default_data_dir()


# ---- deployments ------------------------------------------------------------------------------------


def _entry(group: str, port: int) -> dict[str, object]:
    return {"model_name": group, "litellm_params": {"model": "openai/m", "api_base": f"http://127.0.0.1:{port}/v1"}}


def test_a_widened_group_is_served_by_both_of_its_servers_and_the_rest_is_untouched() -> None:
    model_list = [_entry("cheap", 1), _entry("strong", 2), _entry("cheap@x2", 1), _entry("cheap@x2", 3)]
    model_list += [_entry("strong@x2", 2), _entry("strong@x2", 4)]
    deployment = Deployment(model_list=model_list, specs=[], cheap_x2="cheap@x2", strong_x2="strong@x2")

    wide = widened(deployment, "strong")

    bases = {(e["model_name"], e["litellm_params"]["api_base"]) for e in wide}  # type: ignore[index]
    assert {base for group, base in bases if group == "strong"} == {"http://127.0.0.1:2/v1", "http://127.0.0.1:4/v1"}
    assert {base for group, base in bases if group == "cheap"} == {"http://127.0.0.1:1/v1"}
    assert {base for group, base in bases if group == "strong@x2"} == {"http://127.0.0.1:2/v1", "http://127.0.0.1:4/v1"}
    assert deployment.model_list[1]["model_name"] == "strong"  # the deployment itself is not changed
    assert widened(deployment, "other") == model_list  # no replicas: nothing to widen


# ---- EchoLM points ----------------------------------------------------------------------------------


def test_an_echolm_point_reads_as_the_environment_overrides_its_proxy_gets() -> None:
    assert point_overrides("routing.load_signal=ema, retrieval.k=5") == {
        "ECHOLM_ROUTING__LOAD_SIGNAL": "ema",
        "ECHOLM_RETRIEVAL__K": "5",
    }
    assert point_overrides("routing.quality_target.target=0.8") == {"ECHOLM_ROUTING__QUALITY_TARGET__TARGET": "0.8"}


@pytest.mark.parametrize("spec", ["routing.k", "k=5", "routing.k=", "Routing.K=5", "routing.k=5,,retrieval.k=1"])
def test_a_malformed_echolm_point_is_a_clear_error(spec: str) -> None:
    with pytest.raises(EchoLMError, match=r"section\.key=value"):
        point_overrides(spec)


@pytest.mark.parametrize("spec", ["routing.load_signal=sometimes", "retrieval.no_such_key=1"])
def test_an_echolm_point_the_config_refuses_stops_the_bench_before_it_starts(spec: str, tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "config.yaml"
    options = BenchOptions(config=config, workloads=[], data_dir=DATA, run_dir=tmp_path, echolm_points=[spec])

    with pytest.raises(EchoLMError, match=r"routing|retrieval"):
        Bench(options)
    assert not set(point_overrides(spec)) & set(os.environ)  # the check left nothing behind


def test_every_echolm_point_runs_on_its_own_proxy_settings_after_the_cost_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's plan without servers: which EchoLM passes run, in which order, with which overrides."""
    config = Path(__file__).resolve().parents[2] / "config.yaml"
    options = BenchOptions(
        config=config, workloads=[], data_dir=DATA, run_dir=tmp_path, sizes={"nq_open": (4, 2)},
        semantic_thresholds=[], difficulty_strong_shares=[],  # the baselines' sweeps are not under test
        echolm_cost_weights=[0.1, 0.3], echolm_points=["routing.load_signal=ema"], quality_targets=[0.8],
    )  # fmt: skip
    bench = Bench(options)
    planned: list[tuple[str, bool, dict[str, str]]] = []

    def echolm(workload: Workload, split: Split, folder: Path, point: str, *, with_rates: bool, **settings: str):  # type: ignore[no-untyped-def]
        planned.append((point, with_rates, settings))
        return []

    monkeypatch.setattr(bench, "_echolm", echolm)
    monkeypatch.setattr(bench, "_warm", lambda workload, split, folder: {})
    monkeypatch.setattr(bench, "_difficulty_labels", lambda *args: [])
    monkeypatch.setattr(bench, "_serve", lambda *args: [])
    monkeypatch.setattr(bench, "_serve_with_rates", lambda *args: [])
    monkeypatch.setattr(bench, "_score", lambda *args: None)

    result = bench.run_workload("nq_open", chat=None)  # type: ignore[arg-type]

    assert [(point, rates) for point, rates, _ in planned] == [
        ("cost weight 0.1", True),  # the default point: its Poisson passes too
        ("cost weight 0.3", False),
        ("routing.load_signal=ema", False),
        ("quality target 0.8", False),
    ]
    assert planned[1][2] == {"ECHOLM_ROUTING__COST_WEIGHT": "0.3"}
    assert planned[2][2] == {"ECHOLM_ROUTING__LOAD_SIGNAL": "ema"}
    assert planned[3][2]["ECHOLM_ROUTING__QUALITY_TARGET__TARGET"] == "0.8"
    assert planned[3][2]["ECHOLM_ROUTING__QUALITY_TARGET__METRIC"] == "agreement"
    assert [run.point for run in result.runs if run.system == "echolm"] == [point for point, _, _ in planned]


def test_judged_workloads_hold_win_rate_targets_and_the_others_agreement_targets(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "config.yaml"
    options = BenchOptions(
        config=config, workloads=[], data_dir=DATA, run_dir=tmp_path, quality_targets=[0.8], win_rate_targets=[0.45]
    )
    bench = Bench(options)
    chat = tmp_path / "chat.csv"
    chat.write_text("prompt\nwrite a haiku about rain\n")

    assert bench.targets(user_file(chat)) == [0.45]  # a win rate: 0.5 is parity with the strong tier
    assert bench.targets(banking77(DATA)) == [0.8]


# ---- workloads --------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_free_of_repeated_prompts() -> None:
    items = [QARecord(f"q{i % 30}", ()) for i in range(60)]  # every prompt twice
    first = split_workload(items, warm=10, requests=15, seed=3)
    again = split_workload(items, warm=10, requests=15, seed=3)
    other = split_workload(items, warm=10, requests=15, seed=4)
    assert first == again and first != other
    warm, requests = {i.prompt for i in first.warm}, {i.prompt for i in first.requests}
    assert len(warm) == 10 and len(requests) == 15 and not warm & requests


def test_split_larger_than_the_workload_is_a_clear_error() -> None:
    with pytest.raises(EchoLMError, match="has 30"):
        split_workload([QARecord(f"q{i}", ()) for i in range(30)], warm=20, requests=11, seed=0)


@pytest.mark.parametrize(
    ("answer", "intent"),
    [
        ("card_arrival", "card_arrival"),
        ("Card Arrival.", "card_arrival"),
        ("`lost_or_stolen_card`\nBecause the customer...", "lost_or_stolen_card"),
        ("", ""),
    ],
)
def test_intent_of_reads_the_first_line_as_a_label(answer: str, intent: str) -> None:
    assert intent_of(answer) == intent


def test_banking77_scores_intent_accuracy_on_the_real_file() -> None:
    workload = banking77(DATA)
    item = workload.items[0]
    assert len(workload.items) == 10003 and workload.score is not None
    assert workload.score(item.references[0], item) == 1.0
    assert workload.score("something_else", item) == 0.0
    assert "card_arrival" in (workload.system_prompt or "")


def test_a_user_file_with_references_is_scored_by_token_f1(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "capital of France?", "reference": "Paris"}) + "\n")
    workload = load_workload(str(path), DATA)
    assert workload.name == "mine" and workload.metric == "token_f1" and workload.score is not None
    assert workload.score("Paris", workload.items[0]) == 1.0
    assert workload.secondary["exact_match"]("the city of Paris", workload.items[0]) == 0.0


def test_a_user_file_without_references_is_judged(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    path.write_text("prompt\nwrite a haiku about rain\n")
    workload = user_file(path)
    assert workload.judged and workload.metric == JUDGED


def test_an_unknown_workload_name_is_a_clear_error() -> None:
    with pytest.raises(EchoLMError, match="neither a built-in workload"):
        load_workload("no_such_workload", DATA)


# ---- baselines --------------------------------------------------------------------------------------


class TableEmbedder:
    """Unit vectors from a table: similarities are exactly what a test writes down."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {k: [x / math.sqrt(sum(y * y for y in v)) for x in v] for k, v in table.items()}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.table[text] for text in texts]


class RecordingChat:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        with self.lock:
            self.calls.append((model, messages[-1]["content"]))
        return Answered(f"{model} answer to {messages[-1]['content']}", model, 0.01, 0.005)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_the_semantic_cache_answers_near_duplicates_itself_and_caches_what_it_missed() -> None:
    embedder = TableEmbedder({"warm": [1, 0, 0], "near": [0.95, 0.31, 0], "far": [0, 0, 1]})
    chat = RecordingChat()
    cache = SemanticCache("semantic_cache", embedder, 0.9, ModelSystem("strong", chat, "strong"), [("warm", "W")])  # type: ignore[arg-type]

    hit = cache.answer(_user("near"), 16)
    miss = cache.answer(_user("far"), 16)
    again = cache.answer(_user("far"), 16)

    assert (hit.answer, hit.tier) == ("W", CACHE_TIER) and hit.overhead_ms is not None
    assert miss.tier == "strong" and chat.calls == [("strong", "far")]
    assert (again.answer, again.tier) == (miss.answer, CACHE_TIER)  # the miss's answer was cached


def test_the_difficulty_router_sends_predicted_easy_requests_to_the_cheap_tier() -> None:
    embedder = TableEmbedder(
        {
            "easy1": [1, 0],
            "easy2": [0.99, 0.14],
            "hard1": [0, 1],
            "hard2": [0.14, 0.99],
            "q-easy": [0.98, 0.2],
            "q-hard": [0.2, 0.98],
        }
    )
    chat = RecordingChat()
    router = DifficultyRouter(
        "difficulty_router", embedder, 0.5, ModelSystem("cheap", chat, "cheap"), ModelSystem("strong", chat, "strong"),  # type: ignore[arg-type]
        [("easy1", 1.0), ("easy2", 1.0), ("hard1", 0.0), ("hard2", 0.0)], k=4,
    )  # fmt: skip

    assert (
        router.predicted_easy(embedder.embed(["q-easy"])[0])
        > 0.5
        > router.predicted_easy(embedder.embed(["q-hard"])[0])
    )
    assert router.answer(_user("q-easy"), 8).tier == "cheap"
    assert router.answer(_user("q-hard"), 8).tier == "strong"
    assert [model for model, _ in chat.calls] == ["cheap", "strong"]


def test_the_difficulty_router_calibrates_its_threshold_for_a_share_of_strong_calls() -> None:
    queries = {f"q{i}": [1.0, i / 10] for i in range(10)}  # similarity to "easy" falls as i grows
    embedder = TableEmbedder({"easy": [1, 0], "hard": [0, 1], **queries})
    chat = RecordingChat()
    router = DifficultyRouter(
        "difficulty_router", embedder, 0.0, ModelSystem("cheap", chat, "cheap"), ModelSystem("strong", chat, "strong"),  # type: ignore[arg-type]
        [("easy", 1.0), ("hard", 0.0)], k=2,
    )  # fmt: skip
    router.calibrate(list(queries), strong_share=0.3)
    tiers = [router.answer(_user(q), 8).tier for q in queries]
    assert tiers == ["cheap"] * 7 + ["strong"] * 3  # the three predicted hardest go strong

    router.calibrate(list(queries), strong_share=0.0)
    assert {router.answer(_user(q), 8).tier for q in queries} == {"cheap"}


def test_calibration_hits_the_share_even_when_every_prediction_ties() -> None:
    queries = {f"q{i}": [1.0, i / 10] for i in range(10)}
    embedder = TableEmbedder({"easy": [1, 0], **queries})
    chat = RecordingChat()
    router = DifficultyRouter(
        "difficulty_router", embedder, 0.0, ModelSystem("cheap", chat, "cheap"), ModelSystem("strong", chat, "strong"),  # type: ignore[arg-type]
        [("easy", 1.0)], k=1,
    )  # fmt: skip
    router.calibrate(list(queries), strong_share=0.5)  # one label: every query is predicted 1.0
    assert [router.answer(_user(q), 8).tier for q in queries].count("strong") == 5


class BatchSkewEmbedder(TableEmbedder):
    """A batch comes back a hair off the one-text vectors, as MiniLM's batched `encode` does in the last bits."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = super().embed(texts)
        return vectors if len(texts) == 1 else [[v[0] + 1e-6, *v[1:]] for v in vectors]


def test_calibration_embeds_each_query_as_serving_does_so_the_split_is_exact() -> None:
    queries = {f"q{i}": [1.0, i / 10] for i in range(10)}
    embedder = BatchSkewEmbedder({"easy": [1, 0], "hard": [0, 1], **queries})
    chat = RecordingChat()
    router = DifficultyRouter(
        "difficulty_router", embedder, 0.0, ModelSystem("cheap", chat, "cheap"), ModelSystem("strong", chat, "strong"),  # type: ignore[arg-type]
        [("easy", 1.0), ("hard", 0.0)], k=2,
    )  # fmt: skip
    router.calibrate(list(queries), strong_share=0.5)
    # Batched vectors predict the threshold's own request a hair easier than it is served: it would go strong.
    assert [router.answer(_user(q), 8).tier for q in queries] == ["cheap"] * 5 + ["strong"] * 5


# ---- load -------------------------------------------------------------------------------------------


class SleepySystem:
    name = "sleepy"

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.service_s)
        with self.lock:
            self.in_flight -= 1
        return Answered(messages[-1]["content"], "strong", self.service_s, self.service_s / 2)


WORKLOAD = Workload("w", [], None, "exact_match", lambda a, i: 1.0, 8)


def test_a_closed_loops_saturated_rate_leaves_out_the_drain_where_servers_idle() -> None:
    # Two servers of 1 s each, four clients, nine requests: two finish every second; the last request is
    # sent when the fifth finishes (at 3 s) and runs alone on one server from 4 to 5 s.
    finished = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0]
    answers = [Answered("a", "strong", 1.0, 0.5)] * 9
    load = LoadPass("strong_only", "closed loop, 4 clients", answers, 5.0, clients=4, finished_s=finished)
    assert load.throughput_rps == pytest.approx(9 / 5)  # the drain counted against the servers
    assert load.saturated_rps == pytest.approx(2.0)  # six served by 3 s: the servers' real rate
    # No window with every client busy: the plain rate.
    few = LoadPass("s", "closed loop, 9 clients", answers, 5.0, clients=9, finished_s=finished)
    assert few.saturated_rps == few.throughput_rps


def test_closed_loop_records_when_each_request_finished() -> None:
    items = [QARecord(f"q{i}", ()) for i in range(6)]
    result = closed_loop(SleepySystem(0.02), WORKLOAD, items, clients=2, label="t")
    assert result.clients == 2 and result.finished_s is not None and len(result.finished_s) == 6
    assert all(0.0 < at <= result.wall_s for at in result.finished_s)
    assert result.saturated_rps > 0


def test_closed_loop_keeps_answers_in_request_order_with_at_most_n_in_flight() -> None:
    items = [QARecord(f"q{i}", ()) for i in range(12)]
    system = SleepySystem(0.02)
    result = closed_loop(system, WORKLOAD, items, clients=3, label="t")
    assert [a.answer for a in result.answers] == [i.prompt for i in items]
    assert system.most_in_flight == 3
    assert 12 / result.wall_s == pytest.approx(result.throughput_rps)


def test_open_loop_spaces_arrivals_by_the_rate() -> None:
    items = [QARecord(f"q{i}", ()) for i in range(20)]
    result = open_loop(SleepySystem(0.001), WORKLOAD, items, rate_rps=100.0, seed=1, label="t")
    assert [a.answer for a in result.answers] == [i.prompt for i in items]
    assert result.rate_rps == 100.0
    assert 0.05 < result.wall_s < 1.5  # 20 arrivals at 100/s take about 0.2 s, not 0


def test_an_open_loop_pass_times_only_the_requests_that_arrived_after_its_warm_up() -> None:
    items = [QARecord(f"q{i}", ()) for i in range(40)]
    result = open_loop(SleepySystem(0.001), WORKLOAD, items, rate_rps=100.0, seed=1, label="t", warmup_s=0.2)

    assert result.arrivals_s is not None and len(result.arrivals_s) == 40
    steady = result.steady()
    assert 0 < len(steady) < 40  # about the last half of 0.4 s of arrivals
    assert len(steady) == sum(1 for at in result.arrivals_s if at >= 0.2)
    figures = report.pass_figures(result)
    assert (figures["requests"], figures["requests_timed"]) == (40, len(steady))


# ---- summary and targets ----------------------------------------------------------------------------


def _pass(tiers: Sequence[str], latency: float, wall_s: float) -> LoadPass:
    return LoadPass(
        "s", "closed loop, 2 clients", [Answered("a", t, latency, latency / 2, 10.0) for t in tiers], wall_s
    )


def _result(name: str) -> WorkloadRun:
    items = [QARecord("q", ("a",))] * 4
    workload = Workload(name, items, None, "exact_match", lambda a, i: 1.0, 8)
    return WorkloadRun(
        workload,
        Split(items, items),
        [
            SystemRun("strong_only", "-", "two strong servers", [_pass(["strong"] * 4, 2.0, 8.0)], quality=0.50),
            SystemRun(
                "echolm", "cost weight 0.1", "mixed", [_pass(["cheap"] * 3 + ["strong"], 1.0, 3.0)], quality=0.495
            ),
            SystemRun("echolm", "cost weight 0.3", "mixed", [_pass(["cheap"] * 4, 0.5, 2.0)], quality=0.40),
            SystemRun(
                "semantic_cache", "threshold 0.9", "mixed", [_pass(["cache"] * 3 + ["strong"], 0.8, 2.5)], quality=0.42
            ),
        ],
    )


def test_the_summary_reports_each_systems_first_point_as_its_default() -> None:
    summary = report.summarize([_result("banking77")], "echolm bench", p95_bound_s=10.0)
    workload = summary["workloads"]["banking77"]
    assert workload["systems"]["echolm"]["operating_point"] == "cost weight 0.1"
    assert len(workload["sweeps"]["echolm"]) == 2
    assert workload["systems"]["echolm"]["share_by_tier"] == {"cheap": 0.75, "strong": 0.25}
    assert workload["systems"]["strong_only"]["throughput_rps"] == 0.5
    assert workload["systems"]["echolm"]["overhead_p50_ms"] == 10.0


def test_targets_say_met_or_missed_with_the_figures() -> None:
    summary = report.summarize([_result("banking77")], "echolm bench", p95_bound_s=10.0)
    lines = report.target_lines(summary, None)
    # 1.333 / 0.5 = 2.67x with 0.005 lost: the Banking77 target is met.
    assert any("banking77: EchoLM throughput 2.67x" in line and "**met**" in line for line in lines)
    # The semantic cache's 1.6 req/s lies between EchoLM's points (1.333, 0.495) and (2.0, 0.40): 0.457 > 0.42.
    assert any("EchoLM's quality 0.457 beats semantic_cache" in line for line in lines)


def _poisson(tiers: Sequence[str], latency: float, rate: float) -> LoadPass:
    answers = [Answered("a", t, latency, latency / 2, 10.0) for t in tiers]
    return LoadPass("s", f"Poisson, {rate:g} req/s", answers, len(tiers) / rate, rate)


def test_the_throughput_target_is_also_read_at_the_sustained_poisson_rate_with_that_passes_quality() -> None:
    result = _result("nq_open")
    strong, echolm = result.runs[0], result.runs[1]
    # Strong-only keeps p95 under the bound at 0.5 req/s only; EchoLM at 1.0 as well.
    strong.passes += [_poisson(["strong"] * 2, 4.0, 0.5), _poisson(["strong"] * 2, 12.0, 1.0)]
    echolm.passes += [_poisson(["cheap", "strong"], 3.0, 0.5), _poisson(["cheap"] * 2, 6.0, 1.0)]
    strong.pass_quality, echolm.pass_quality = [0.5, 0.5, 0.5], [0.495, 0.5, 0.5]
    summary = report.summarize([result], "echolm bench", p95_bound_s=10.0)
    figures = summary["workloads"]["nq_open"]["systems"]
    assert figures["echolm"]["sustained_rate_rps"] == 1.0 and figures["strong_only"]["sustained_rate_rps"] == 0.5
    assert [p["quality"] for p in figures["echolm"]["open_loop"]] == [0.5, 0.5]
    line = next(line for line in report.target_lines(summary, None) if "sustained rate" in line)
    assert "EchoLM 1 vs strong-only 0.5 req/s = 2.00x" in line and "**met** (open loop)" in line

    echolm.pass_quality = [0.495, 0.5, 0.3]  # the rate that held cost 20 points: missed
    summary = report.summarize([result], "echolm bench", p95_bound_s=10.0)
    line = next(line for line in report.target_lines(summary, None) if "sustained rate" in line)
    assert "0.3 vs 0.5" in line and "**missed** (open loop)" in line
    assert "| echolm | cost weight 0.1 | 1 |" in report.format_report(summary, None, [])


def test_each_pass_of_a_reference_workload_is_scored_on_the_requests_it_answered() -> None:
    items = [QARecord(f"q{i}", (f"a{i}",)) for i in range(4)]
    workload = Workload("nq_open", items, None, "exact_match", lambda a, i: float(a == i.references[0]), 8)

    def answered(texts: Sequence[str]) -> list[Answered]:
        return [Answered(t, "strong", 1.0, None) for t in texts]

    closed = LoadPass("s", "closed loop, 2 clients", answered(["a0", "a1", "x", "a3"]), 4.0)
    poisson = LoadPass("s", "Poisson, 1 req/s", answered(["x", "a1"]), 2.0, 1.0)  # the first two requests
    run = SystemRun("strong_only", "-", "two strong servers", [closed, poisson])
    result = WorkloadRun(workload, Split([], items), [run])
    Bench.__new__(Bench)._score(result, None)  # type: ignore[arg-type]  # reference workloads call no judge
    assert run.quality == 0.75 and run.pass_quality == [0.75, 0.5]


def test_every_request_of_every_pass_gets_a_row_with_what_the_client_saw() -> None:
    result = _result("banking77")
    result.runs[1].passes.append(_poisson(["cheap", "strong"], 3.0, 0.5))
    rows = report.request_rows([result])
    assert len(rows) == sum(len(p.answers) for run in result.runs for p in run.passes) == 18
    poisson = [row for row in rows if row["load"] == "Poisson, 0.5 req/s"]
    assert [(row["request"], row["tier"], row["latency_s"]) for row in poisson] == [
        (0, "cheap", 3.0),
        (1, "strong", 3.0),
    ]
    assert poisson[0]["system"] == "echolm" and poisson[0]["point"] == "cost weight 0.1"
    assert json.loads(json.dumps(rows[0]))["overhead_ms"] == 10.0


def test_the_sustained_rate_line_says_when_a_system_held_no_rate() -> None:
    result = _result("banking77")
    result.runs[0].passes.append(_poisson(["strong"] * 2, 12.0, 1.0))
    result.runs[1].passes.append(_poisson(["cheap"] * 2, 3.0, 1.0))
    summary = report.summarize([result], "echolm bench", p95_bound_s=10.0)
    line = next(line for line in report.target_lines(summary, None) if "sustained rate" in line)
    assert "strong-only held none of them" in line

    result.runs[1].passes[-1] = _poisson(["cheap"] * 2, 12.0, 1.0)
    summary = report.summarize([result], "echolm bench", p95_bound_s=10.0)
    line = next(line for line in report.target_lines(summary, None) if "sustained rate" in line)
    assert "neither EchoLM nor strong-only held any of them" in line


def test_interpolation_is_piecewise_linear_and_refuses_to_extrapolate() -> None:
    points = [(1.0, 0.5), (2.0, 0.3)]
    assert report._interpolate(points, 1.5) == pytest.approx(0.4)
    assert report._interpolate(points, 2.5) is None


def test_a_quality_target_point_reports_the_level_held_and_the_offload_it_bought() -> None:
    result = _result("nq_open")
    target = SystemRun(
        "echolm", "quality target 0.8", "mixed", [_pass(["cheap"] * 3 + ["strong"], 1.0, 3.0)], quality=0.45
    )
    target.secondary = {"agreement_with_strong_only": 0.85}
    missed = SystemRun(
        "echolm", "quality target 0.9", "mixed", [_pass(["cheap"] * 2 + ["strong"] * 2, 1.0, 3.0)], quality=0.45
    )
    missed.secondary = {"agreement_with_strong_only": 0.7}
    result.runs += [target, missed]
    summary = report.summarize([result], "echolm bench", p95_bound_s=10.0, strongest="strong")
    lines = report.quality_target_lines("nq_open", summary["workloads"]["nq_open"], "strong")
    assert lines[0].startswith("- nq_open: quality target 0.8") and "**held**; offload 75%" in lines[0]
    assert "0.7 — **not held**; offload 50%" in lines[1]


def test_a_semantic_cache_with_no_warm_answers_caches_its_first_miss() -> None:
    embedder = TableEmbedder({"q": [1, 0]})
    chat = RecordingChat()
    cache = SemanticCache("semantic_cache", embedder, 0.9, ModelSystem("strong", chat, "strong"), [])  # type: ignore[arg-type]
    assert cache.answer(_user("q"), 8).tier == "strong"
    assert cache.answer(_user("q"), 8).tier == CACHE_TIER and len(chat.calls) == 1


def test_the_pool_and_the_requests_may_come_from_files_of_their_own(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "config.yaml"
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"question": "pool question {n}", "answer": ["a{n}"]}}\n' for n in range(5)))
    asked = tmp_path / "requests.csv"
    asked.write_text("prompt,reference\n" + "".join(f"new question {n},r{n}\n" for n in range(4)))
    workload = load_workload("nq_open", DATA)

    def split(**files: Path) -> Split:
        options = BenchOptions(config=config, workloads=[], data_dir=DATA, run_dir=tmp_path, **files)  # type: ignore[arg-type]
        return Bench(options)._split(workload, 3, 2)

    both = split(pool_file=pool, requests_file=asked)
    assert [i.prompt for i in both.warm] == ["pool question 0", "pool question 1", "pool question 2"]
    assert [i.prompt for i in both.requests] == ["new question 0", "new question 1"]
    assert both.warm[0].references == ("a0",)  # scored by the workload's own metric against them
    only_pool = split(pool_file=pool)
    assert len(only_pool.requests) == 2 and {i.prompt for i in only_pool.requests} <= {i.prompt for i in workload.items}
    overlapping = tmp_path / "overlap.jsonl"
    overlapping.write_text('{"question": "pool question 1"}\n')
    with pytest.raises(EchoLMError, match="share 1 prompts"):
        split(pool_file=pool, requests_file=overlapping)


def test_the_quality_plot_bars_each_point_by_its_sample_size(tmp_path: Path) -> None:
    assert report.quality_bound(0.5, 100) == pytest.approx(0.098)  # 1.96 * sqrt(0.25 / 100)
    assert report.quality_bound(0.5, 400) == pytest.approx(0.049)  # four times the requests: half the bar
    assert report.quality_bound(1.0, 30) == 0.0
    summary = report.summarize([_result("banking77")], "echolm bench", p95_bound_s=10.0)
    path = report.plot_quality_vs_throughput(summary, tmp_path / "q.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
