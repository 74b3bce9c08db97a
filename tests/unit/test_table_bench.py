"""`echolm bench --tables`: live answers mapped to the table's choices, scored and paired with the table's
strong answers, checked against the table, and written as summary.json, report.md and labelled plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, REUSE, STRONG, Answer
from echolm_lab.bench.load import LoadPass
from echolm_lab.bench.offload_study import Calibration
from echolm_lab.bench.systems import Answered
from echolm_lab.bench.table_bench import (
    REUSE_GROUP,
    LivePass,
    RivalComparison,
    TableWorkloadRun,
    by_item,
    choice_of,
    score_pass,
)
from echolm_lab.bench.table_bench_report import (
    format_report,
    plot_latency_vs_load,
    plot_quality_vs_offload,
    plot_reuse_reliability,
    summarize,
)
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_policies import Ceiling, PolicyResult
from echolm_lab.bench.table_scores import PolicyScore
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord

PRICES = {STRONG: 2.0, CHEAP: 0.1, CHEAP_WITH_EXAMPLES: 0.1}


def _workload() -> Workload:
    return Workload(
        name="capitals", items=[], system_prompt=None, metric="exact_match",
        score=lambda answer, item: float(answer == item.references[0]), max_tokens=8,
    )  # fmt: skip


def _answer(item: str, choice: str, text: str) -> Answer:
    return Answer(
        key=f"{item}/{choice}", workload="capitals", item=item, choice=choice, tier=choice, model_sha256="m",
        server_version="v", messages=[], system_sha256="", params={}, answer=text, finish_reason="stop",
        prompt_tokens=90, completion_tokens=10, latency_s=1.0,
    )  # fmt: skip


def test_a_live_answer_is_named_by_its_tier_and_whether_examples_went_with_it() -> None:
    def served(tier: str, examples: int) -> Answered:
        return Answered("a", tier, 1.0, None, examples=examples)

    assert choice_of(served("cheap", 2), "cheap", "strong") == CHEAP_WITH_EXAMPLES
    assert choice_of(served("cheap", 0), "cheap", "strong") == CHEAP
    assert choice_of(served("strong", 0), "cheap", "strong") == STRONG
    assert choice_of(served("strong@x2", 0), "cheap", "strong") == STRONG  # strong-only's two servers
    assert choice_of(served(REUSE_GROUP, 0), "cheap", "strong") == REUSE


def test_the_reusing_systems_proxy_config_holds_its_fit_and_a_free_group_to_log_reuse_under(tmp_path: Path) -> None:
    from echolm_lab.bench.deployments import bench_deployment, write_proxy_config
    from echolm_middleware.config import check_reuse_group_exists, load_settings, model_groups_in

    raw = load_settings(Path("config.yaml"))[1]
    deployment = bench_deployment(raw, "cheap", "strong", replica_ports=(8103, 8104))
    reuse = {"enabled": True, "weights": [0.5] * 7, "min_probability": 0.9, "model_group": REUSE_GROUP}

    path = write_proxy_config(raw, deployment, tmp_path / "proxy.yaml", with_echolm=True, reuse=reuse)

    settings, written = load_settings(path)
    assert settings.routing.reuse.enabled and settings.routing.reuse.weights == [0.5] * 7
    check_reuse_group_exists(settings.routing, model_groups_in(written))  # does not raise
    (free,) = [m for m in written["model_list"] if m["model_name"] == REUSE_GROUP]
    assert free["litellm_params"]["input_cost_per_token"] == free["litellm_params"]["output_cost_per_token"] == 0.0


def _live(items: list[QARecord], answered: list[Answered], choices: list[str]) -> LivePass:
    load = LoadPass("echolm", "Poisson", answered, wall_s=10.0, rate_rps=1.0, arrivals_s=[0.0] * len(items))
    return LivePass("echolm", 1.0, load, items, choices)


def test_a_live_pass_is_paired_with_the_tables_strong_answers_and_checked_against_the_table() -> None:
    items = [QARecord(f"capital of {c}?", (c.upper(),)) for c in ("fr", "de", "it", "es")]
    table = by_item(
        [_answer(i.prompt, STRONG, i.references[0]) for i in items]  # the strong tier right on all four
        + [_answer(i.prompt, CHEAP, "wrong") for i in items]
    )
    answered = [
        Answered("FR", "strong", 1.0, None),  # the table's strong answer: equal
        Answered("DE", "cheap", 1.0, None, examples=1),  # cheap with examples, right: not compared
        Answered("nope", "cheap", 1.0, None),  # cheap without examples: the table said "wrong", not equal
        Answered("", "strong", 1.0, None, error="timeout"),  # failed: neither scored nor compared
    ]
    live = _live(items, answered, [STRONG, CHEAP_WITH_EXAMPLES, CHEAP, STRONG])

    score_pass(live, table, _workload().score, PRICES)  # type: ignore[arg-type]

    assert live.quality == pytest.approx(2 / 3)
    assert live.difference == pytest.approx(-1 / 3)  # paired: the strong tier was right on all three
    assert live.interval is not None and live.interval[0] <= -1 / 3 <= live.interval[1]
    assert live.matched_table == (1, 2)
    # Strong at 2.0 per 1k, the cheap choices at 0.1 per 1k, 100 tokens each (cheap with examples has no
    # table answer here: not costed).
    assert live.cost_per_request == pytest.approx((0.2 + 0.01) / 2)
    # Half the requests on each tier at 1 s each: the split's busiest server and the two slots both
    # saturate at strong-only's rate.
    assert live.ceiling is not None
    assert (live.ceiling.fixed_split, live.ceiling.elastic) == (pytest.approx(1.0), pytest.approx(1.0))


def test_the_summary_report_and_plots_carry_intervals_sample_sizes_and_ceilings(tmp_path: Path) -> None:
    items = [QARecord(f"q{n}", ("a",)) for n in range(3)]
    source = TableWorkload(_workload(), [QARecord("p", ("a",))], items)
    policies = [
        PolicyResult(
            PolicyScore("strong-only", 1000, 0.8, 0.0, (0.0, 0.0), {STRONG: 1.0}), Ceiling(0.5, 1.0, {}), 2e-4
        ),
        PolicyResult(
            PolicyScore("cheap-only", 1000, 0.7, -0.1, (-0.13, -0.07), {CHEAP: 1.0}), Ceiling(1.2, 2.4, {}), 1e-5
        ),
    ]
    run = TableWorkloadRun(source, policies, capacity_rps=1.6, mean_service_s={STRONG: 1.25})
    run.reuse_reliability = Calibration(40, 0.25, 0.12, 0.81, [(0.1, 0.05, 20), (0.6, 0.45, 20)])
    live = _live(items, [Answered("a", "cheap", 2.0, None)] * 3, [CHEAP] * 3)
    live.quality, live.difference, live.interval = 1.0, 0.0, (0.0, 0.0)
    live.rivals.append(
        RivalComparison("difficulty router, strong share 0.00", 3, 0.3333, (0.0, 1.0), Ceiling(0.7, 1.4, {}))
    )
    run.passes.append(live)

    summary = summarize([run], "echolm bench --tables t", p95_bound_s=10.0)
    report = format_report(summary, ["quality_vs_offload.png"])
    quality_plot = plot_quality_vs_offload(summary, tmp_path / "q.png")
    latency_plot = plot_latency_vs_load(summary, tmp_path / "l.png")

    data = summary["workloads"]["capitals"]
    assert data["policies"][1]["difference_interval_95"] == [-0.13, -0.07]
    assert data["policies"][1]["ceiling_fixed_split"] == 1.2 and data["policies"][1]["paired_requests"] == 1000
    assert data["open_loop"][0]["share_by_choice"] == {CHEAP: 1.0}
    assert data["sustained_rate_rps"] == {"echolm (fixed)": 1.0}
    assert "| echolm (fixed) | 1x | 1.00 | 3 (3) |" in report and "ceiling_elastic" in data["open_loop"][0]
    assert "| cheap-only | 1000 | 0.700 | -0.100 (-0.130 to -0.070) | cheap 100% | 1.00e-05 | 1.20x | 2.40x |" in report
    # Against the baseline at its own strong share: the baseline's ceiling on the pass's deployment in req/s.
    assert (
        "| echolm (fixed) | 1x | difficulty router, strong share 0.00 | 3 | +0.333 (+0.000 to +1.000) | 1.12 |"
        in report
    )
    assert "The shipped reuse model on these 40 requests: base rate" in report
    assert (
        "AUC 0.810; reliability per decile of P (mean P -> observed, n): 0.10 -> 0.05 (20), 0.60 -> 0.45 (20)."
        in report
    )
    reliability_plot = plot_reuse_reliability(summary, tmp_path / "r.png")
    assert reliability_plot is not None and reliability_plot.stat().st_size > 0
    assert json.loads(json.dumps(summary)) == summary  # plain JSON
    assert quality_plot.stat().st_size > 0 and latency_plot.stat().st_size > 0


def test_the_elastic_deployment_serves_each_tier_on_both_of_its_servers() -> None:
    from echolm_lab.bench.deployments import Deployment
    from echolm_lab.bench.table_bench import both_servers

    def entry(name: str, port: int) -> dict[str, object]:
        return {"model_name": name, "litellm_params": {"model": "openai/m", "api_base": f"http://127.0.0.1:{port}/v1"}}

    fixed = Deployment(
        model_list=[entry("cheap", 1), entry("strong", 2), entry("cheap@x2", 1), entry("cheap@x2", 3),
                    entry("strong@x2", 2), entry("strong@x2", 4)],
        specs=[], cheap_x2="cheap@x2", strong_x2="strong@x2",
    )  # fmt: skip

    models = both_servers(fixed)

    servers = {(m["model_name"], m["litellm_params"]["api_base"]) for m in models}  # type: ignore[index]
    assert servers == {
        ("cheap", "http://127.0.0.1:1/v1"), ("cheap", "http://127.0.0.1:3/v1"),
        ("strong", "http://127.0.0.1:2/v1"), ("strong", "http://127.0.0.1:4/v1"),
    }  # fmt: skip
    assert fixed.model_list[2]["model_name"] == "cheap@x2"  # the fixed deployment untouched
