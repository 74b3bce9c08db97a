"""The demo's summary row: a request answered from the cache is counted in its own column, not a tier's."""

from __future__ import annotations

import pytest

from echolm_lab.datasets import QARecord
from echolm_lab.demo import REUSED, PassReport, RequestResult, format_table, summarize


def _result(tier: str, action: str, overhead_ms: float) -> RequestResult:
    return RequestResult(
        record=QARecord("who wrote hamlet", ("Shakespeare",)), answer="Shakespeare", tier=tier, action=action,
        examples=0, latency_s=0.5, request_id="r", overhead_ms=overhead_ms,
    )  # fmt: skip


def test_reused_answers_have_their_own_share_and_count_in_the_overhead() -> None:
    report = PassReport(
        "echolm inline",
        [_result("cheap", "route", 20.0), _result("strong", "route", 30.0), _result(REUSED, "reuse", 10.0)],
        wall_s=3.0,
    )
    tiers = ["cheap", "strong", REUSED]

    row = summarize(report, tiers)

    assert row["share"] == {"cheap": pytest.approx(1 / 3), "strong": pytest.approx(1 / 3), REUSED: pytest.approx(1 / 3)}
    assert sorted(report.overhead_ms) == [10.0, 20.0, 30.0]
    assert row["exact_match"] == 1.0
    header = format_table([row], tiers).splitlines()[0]
    assert "% reuse" in header and "reuse p50/p95 s" in header
