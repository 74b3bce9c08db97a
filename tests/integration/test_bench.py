"""`echolm bench` end to end on the real local tiers, at a tiny size: every system, a report, plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import CONFIG, ROOT, LocalTiers

pytestmark = pytest.mark.integration


def test_a_tiny_bench_serves_every_system_and_writes_its_report(local_tiers: LocalTiers, tmp_path: Path) -> None:
    # On the configured ports the bench finds the session's tiers answering and uses them (it stops only
    # the servers it started: here the second cheap and the second strong server).
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.read_text())
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", OMP_NUM_THREADS="1")

    done = subprocess.run(
        [
            sys.executable, "-m", "echolm_middleware.cli.main", "bench", "--config", str(config),
            "--workloads", "nq_open", "--warm", "8", "--requests", "2", "--semantic-thresholds", "0.8",
            "--difficulty-strong-shares", "0.5", "--cost-weights", "0.1", "--quality-targets", "0.8",
            "--rates", "1", "--rate-requests", "2", "--warmup", "0",
            "--replica-ports", "8303", "8304", "--overhead-sizes", "200", "--overhead-queries", "10",
            "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--run", "tiny",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "results" / "tiny"
    summary = json.loads((out / "summary.json").read_text())
    workload = summary["workloads"]["nq_open"]
    assert workload["metric"] == "exact_match" and workload["requests"] == 2
    assert set(workload["systems"]) == {"strong_only", "small_only", "semantic_cache", "difficulty_router", "echolm"}
    for name, system in workload["systems"].items():
        assert system["errors"] == 0, name
        assert system["throughput_rps"] > 0 and 0 <= system["quality"] <= 1
        assert system["latency_p50_s"] <= system["latency_p95_s"] <= system["latency_p99_s"]
        assert abs(sum(system["share_by_tier"].values()) - 1) < 1e-6
    # Strong-only and small-only ran on their two-server groups; the difficulty router sent half each way.
    assert workload["systems"]["strong_only"]["share_by_tier"] == {"strong@x2": 1.0}
    assert workload["systems"]["small_only"]["share_by_tier"] == {"cheap@x2": 1.0}
    assert workload["systems"]["difficulty_router"]["share_by_tier"] == {"cheap": 0.5, "strong": 0.5}
    # EchoLM's own overhead comes back in its response headers; the quality-target point is in the sweep.
    assert workload["systems"]["echolm"]["overhead_p50_ms"] > 0
    points = [p["operating_point"] for p in workload["sweeps"]["echolm"]]
    assert points == ["cost weight 0.1", "quality target 0.8"]
    # The semantic cache's misses went to both strong servers; Poisson passes ran for strong-only and EchoLM.
    assert set(workload["systems"]["semantic_cache"]["share_by_tier"]) <= {"cache", "strong@x2"}
    for name in ("strong_only", "echolm"):
        (poisson,) = workload["systems"][name]["open_loop"]
        assert poisson["rate_rps"] == 1.0 and poisson["errors"] == 0
        assert sum(poisson["share_by_tier"].values()) == pytest.approx(1.0, abs=0.01)
        assert 0 <= poisson["quality"] <= 1  # scored on the pass's own answers
    # One row per request of every pass: 2 per closed loop (6 of them), 2 per Poisson pass (2).
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 6 + 2 * 2 and not (out / "requests.jsonl.partial").exists()
    assert {row["system"] for row in rows} == set(workload["systems"])
    assert all(row["error"] is None and row["latency_s"] > 0 for row in rows)
    assert summary["overhead"]["sizes"][0]["entries"] == 200
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "| echolm | cost weight 0.1 |" in report
    assert "nq_open: sustained rate (p95 ≤ 10 s, rates tried 1 req/s)" in report and "Poisson passes" in report
    for plot in ("quality_vs_throughput.png", "latency_cdf.png", "overhead_vs_cache_size.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_a_tiny_bench_on_an_answers_table_pairs_every_policy_and_times_both_systems(
    local_tiers: LocalTiers, tmp_path: Path
) -> None:
    """`echolm answers` fills a tiny table on the real tiers; `echolm bench --tables` scores every policy off
    it and times strong-only and EchoLM on the real servers, checking their answers against the table.
    EchoLM's passes reach their warm store through a Chroma server (`--store-server`), as in production."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.read_text())
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "echolm_middleware.cli.main"]

    built = subprocess.run(
        [*cli, "answers", "--config", str(config), "--workload", "nq_open", "--pool", "8", "--requests", "4", "--train", "0",
         "--table", str(tmp_path / "tables" / "nq_open.jsonl"), "--work", str(tmp_path / "answers")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "held: {'strong': 4, 'cheap': 4, 'cheap+examples': 4, 'pool': 8}" in built.stdout

    done = subprocess.run(
        [*cli, "bench", "--config", str(config), "--tables", str(tmp_path / "tables"), "--workloads", "nq_open",
         "--load-multiples", "2", "nq_open=1", "--pass-requests", "5", "nq_open=3", "--warmup", "0", "--replica-ports", "8303", "8304",
         "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--run", "tiny", "--store-server"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "results" / "tiny"
    workload = json.loads((out / "summary.json").read_text())["workloads"]["nq_open"]
    policies = {p["policy"]: p for p in workload["policies"]}
    assert policies["strong-only"]["paired_requests"] == 4 and policies["strong-only"]["difference_to_strong_only"] == 0
    assert {"cheap-only", "semantic cache 0.9", "difficulty router, strong share 0.5"} <= set(policies)
    assert all(p["difference_interval_95"][0] <= p["difference_to_strong_only"] <= p["difference_interval_95"][1]
               for p in policies.values())  # fmt: skip
    assert workload["strong_only_capacity_rps"] > 0
    # The passes' rates are multiples of the capacity measured on this machine, not the table's.
    assert any(note.startswith("strong-only capacity measured on this machine") for note in workload["notes"])
    assert any("through a `chroma run` server" in note for note in workload["notes"])
    assert not any("Chroma server ended" in note or "proxy ended" in note for note in workload["notes"])
    for deployment in ("fixed", "elastic"):  # each pass's nearest-example queries went to its Chroma server
        served = (tmp_path / "work" / "tiny" / "nq_open" / f"echolm-{deployment}-1" / "chroma-chroma.log").read_text()
        assert "/query" in served
    passes = {p["system"]: p for p in workload["open_loop"]}
    assert set(passes) == {"strong_only", "echolm"}
    # The workload's own multiple and pass size (nq_open=1, nq_open=3) took the place of the run's (2, 5).
    assert {p["load_multiple"] for p in workload["open_loop"]} == {1.0}
    for live in passes.values():
        assert live["requests"] == 3 and live["errors"] == 0 and 0 <= live["quality"] <= 1
    # Strong-only's live answers are the table's: the same server, the same messages, temperature 0.
    equal = passes["strong_only"]["answers_equal_to_table"]
    assert equal["compared"] == 3 and equal["equal"] >= 2
    assert passes["strong_only"]["share_by_choice"] == {"strong": 1.0}
    for plot in ("quality_vs_offload.png", "latency_vs_load.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
