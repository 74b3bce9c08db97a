"""Two proxy workers on a Chroma server and a Redis server, all real, on loopback.

The workers share the example store (Chroma), the per-tier load and the upkeep's lock (Redis) and one
metrics view (prometheus-client's multiprocess folder). Killing Redis or Chroma under traffic fails no
request; the failure shows in the metrics, and when the server returns the workers use it again without
a restart. Both workers run the upkeep scheduler, and each period gets one pass.
"""

from __future__ import annotations

import collections
import os
import re
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echolm_lab.local_services import Service, free_port, start_chroma, start_redis
from echolm_lab.proxy_process import ProxyProcess, running_proxy
from tests.integration.conftest import CONFIG, STRONG, LocalTiers
from tests.integration.workers import ask_all, metric_total, metrics_text, wait_routed

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of Japan?",
    "Which planet is known as the red planet?",
    "Who wrote the play Hamlet?",
    "What is the boiling point of water in Celsius?",
    "Which ocean is the largest?",
    "What gas do plants take in from the air?",
]


@pytest.fixture(scope="module")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("servers")
    redis = start_redis(free_port(), base / "redis")
    chroma = start_chroma(free_port(), base / "chroma")
    servers = {"redis": redis, "chroma": chroma, "base": base}
    yield servers
    for service in (servers["redis"], servers["chroma"]):
        service.stop()


@pytest.fixture(scope="module")
def two_workers(local_tiers: LocalTiers, shared_servers: dict[str, Any]) -> Iterator[ProxyProcess]:
    base: Path = shared_servers["base"]
    env = dict(os.environ)
    env["ECHOLM_STORE__SERVER_URL"] = shared_servers["chroma"].url
    env["ECHOLM_COORDINATION__REDIS_URL"] = shared_servers["redis"].url
    env["ECHOLM_STATE__PATH"] = str(base / "state.db")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the proxy gets a fresh one for its two workers
    # Both workers run the upkeep scheduler every 6 s; a zero budget keeps the passes off the model servers.
    env["ECHOLM_UPKEEP__SCHEDULE_MINUTES"] = "0.1"
    env["ECHOLM_UPKEEP__BUDGET_TOKENS"] = "0"
    with running_proxy(CONFIG, env=env, workers=2, log_path=base / "proxy.log") as proxy:
        wait_routed(proxy)
        yield proxy


def test_the_metrics_of_both_workers_add_up_and_need_the_master_key(two_workers: ProxyProcess) -> None:
    before = metric_total(metrics_text(two_workers, two_workers.master_key), "echolm_requests_total")

    answers = ask_all(two_workers, QUESTIONS)

    assert all(answer.strip() for answer, _ in answers)
    text = metrics_text(two_workers, two_workers.master_key)
    # Each scrape is answered by one worker, yet counts both workers' requests.
    assert metric_total(text, "echolm_requests_total") - before == len(QUESTIONS)
    assert "echolm_examples_per_request_bucket" in text
    assert "echolm_best_similarity_count" in text
    with pytest.raises(urllib.error.HTTPError) as refused:
        metrics_text(two_workers, "sk-wrong")
    assert refused.value.code == 401
    refused.value.close()


def test_with_redis_killed_every_request_is_answered_and_redis_is_used_again_when_back(
    two_workers: ProxyProcess, shared_servers: dict[str, Any]
) -> None:
    import redis as redis_lib

    redis: Service = shared_servers["redis"]
    errors_before = metric_total(metrics_text(two_workers, two_workers.master_key), "echolm_coordination_errors_total")
    redis.kill()

    answers = ask_all(two_workers, QUESTIONS)

    assert all(answer.strip() for answer, _ in answers)
    assert all(headers["x-echolm-action"] == "route" for _, headers in answers)  # routed on local load
    errors = metric_total(metrics_text(two_workers, two_workers.master_key), "echolm_coordination_errors_total")
    assert errors > errors_before

    shared_servers["redis"] = start_redis(redis.port, shared_servers["base"] / "redis")
    time.sleep(3.0)  # past coordination.retry_after_s (2 s)
    ask_all(two_workers, QUESTIONS[:4])
    with redis_lib.Redis.from_url(shared_servers["redis"].url) as client:
        stats = client.info("commandstats")
    # The restarted server's own counters: the workers wrote their load to it again, no proxy restart.
    assert stats.get("cmdstat_zadd", {}).get("calls", 0) >= 1
    assert stats.get("cmdstat_zcard", {}).get("calls", 0) >= 1


def test_with_chroma_killed_requests_fail_open_and_are_routed_again_when_it_returns(
    two_workers: ProxyProcess, shared_servers: dict[str, Any]
) -> None:
    chroma: Service = shared_servers["chroma"]
    failed_before = metric_total(metrics_text(two_workers, two_workers.master_key), "echolm_fail_open_total")
    chroma.kill()

    answers = ask_all(two_workers, QUESTIONS)

    assert all(answer.strip() for answer, _ in answers)
    assert {headers["x-echolm-action"] for _, headers in answers} == {"fail_open"}
    assert all(headers["x-echolm-tier"] == STRONG for _, headers in answers)
    assert metric_total(
        metrics_text(two_workers, two_workers.master_key), "echolm_fail_open_total"
    ) >= failed_before + len(QUESTIONS)

    shared_servers["chroma"] = start_chroma(chroma.port, shared_servers["base"] / "chroma")
    answers = ask_all(two_workers, QUESTIONS)

    assert all(headers["x-echolm-action"] == "route" for _, headers in answers)


def test_each_upkeep_period_runs_one_pass_between_the_two_workers(two_workers: ProxyProcess) -> None:
    deadline = time.monotonic() + 60
    passes: collections.Counter[str] = collections.Counter()
    while time.monotonic() < deadline:
        passes = collections.Counter(re.findall(r"echolm upkeep pass \S+ for period (\d+)", two_workers.log_tail(5000)))
        if len(passes) >= 4:
            break
        time.sleep(2.0)

    assert len(passes) >= 4, two_workers.log_tail(40)
    assert set(passes.values()) == {1}, passes  # never two passes for one period
    counts = metrics_text(two_workers, two_workers.master_key)
    # The other worker fired too and stood aside (a pass that failed while Chroma was down counts apart).
    assert metric_total(counts, "echolm_upkeep_passes_total", outcome="skipped") >= 1
