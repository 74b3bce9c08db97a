"""The decision summary: headers hold only what HTTP allows, the caller never sees the tenant, and a summary
carried in request metadata comes back as it left (and nothing else passes for one)."""

from __future__ import annotations

import pytest

from echolm_middleware.core.summary import DecisionSummary, header_value
from echolm_middleware.metrics import BoundedLabel


def test_control_characters_and_non_ascii_in_a_reason_or_model_become_question_marks() -> None:
    summary = DecisionSummary(
        request_id="abc",
        action="pass_through",
        tier="strong\r\nx-injected: 1",
        reason="non-text content in a \x11 message: é",
    )

    headers = summary.headers()

    assert headers["x-echolm-tier"] == "strong??x-injected: 1"
    assert headers["x-echolm-reason"] == "non-text content in a ? message: ?"
    assert all(" " <= char <= "~" for value in headers.values() for char in value)


def test_long_values_are_cut() -> None:
    assert len(header_value("x" * 1000)) == 200


def test_a_routed_summary_shows_its_figures_and_no_reason() -> None:
    summary = DecisionSummary(
        "r1", "route", "cheap", examples=2, example_tokens=40, best_similarity=0.91234, similarity_shown=True
    )

    headers = summary.with_overhead(3.14159).headers()

    assert headers == {
        "x-echolm-request-id": "r1",
        "x-echolm-action": "route",
        "x-echolm-tier": "cheap",
        "x-echolm-examples": "2",
        "x-echolm-example-tokens": "40",
        "x-echolm-overhead-ms": "3.14",
        "x-echolm-best-similarity": "0.9123",
    }


def test_a_request_routed_around_a_failing_tier_says_so() -> None:
    summary = DecisionSummary("r1", "route", "strong", reason="routed; left out after failing: cheap")

    assert summary.headers()["x-echolm-reason"] == "routed; left out after failing: cheap"


def test_the_caller_never_sees_the_tenant() -> None:
    summary = DecisionSummary("r1", "route", "cheap", tenant="team:secret")

    assert "tenant" not in summary.caller_view()
    assert "team:secret" not in str(summary.caller_view()) + str(summary.headers())


def test_a_failed_chosen_tier_is_reported_as_failing_open_to_the_named_model() -> None:
    summary = DecisionSummary("r1", "route", "cheap", examples=1)

    failed = summary.chosen_tier_failed("strong")

    assert (failed.action, failed.tier, failed.reason) == ("fail_open", "strong", "chosen tier cheap failed")
    assert summary.tier == "cheap"  # the original is unchanged: summaries are frozen values


def test_a_summary_survives_the_trip_through_request_metadata() -> None:
    summary = DecisionSummary("r1", "route", "cheap", 1, 12, 0.8, "routed", "team:a", 2.5)

    assert DecisionSummary.from_metadata(summary.to_metadata()) == summary


@pytest.mark.parametrize(
    "planted",
    [
        None,
        "route",
        {"action": "route", "tier": "cheap"},  # no request id
        {"request_id": "r1", "action": "steal", "tier": "cheap"},  # not one of our actions
        {"request_id": "r1", "action": "route", "tier": 3},
        {"request_id": "r1", "action": "route", "tier": "cheap", "examples": "2"},
        {"request_id": "r1", "action": "route", "tier": "cheap", "best_similarity": True},
    ],
)
def test_anything_else_in_metadata_is_not_a_summary(planted: object) -> None:
    assert DecisionSummary.from_metadata(planted) is None


def test_the_best_similarity_is_shown_only_when_the_operator_allows_it() -> None:
    """Within a tenant it says whether a teammate asked something alike (requests.best_similarity_header)."""
    hidden = DecisionSummary("r1", "route", "cheap", best_similarity=0.9)

    assert "x-echolm-best-similarity" not in hidden.headers()
    assert hidden.caller_view()["best_similarity"] is None
    assert hidden.to_metadata()["best_similarity"] == 0.9  # our metrics still have it
    assert DecisionSummary.from_metadata(hidden.to_metadata()) == hidden


def test_a_reason_leaves_out_our_addresses_and_files() -> None:
    reason = (
        "StoreUnavailable: chroma query failed: http://10.0.0.7:8000/api/v2/tenants failed;"
        " see /var/lib/echolm/chroma/chroma.sqlite3"
    )
    summary = DecisionSummary("r1", "fail_open", "strong", reason=reason)

    for shown in (summary.headers()["x-echolm-reason"], summary.caller_view()["reason"]):
        assert "10.0.0.7" not in shown and "/var/lib" not in shown
        assert shown.startswith("StoreUnavailable: chroma query failed: <url>")


def test_metric_labels_are_bounded_per_process() -> None:
    label = BoundedLabel(2)

    assert [label(value) for value in ("team:a", "team:b", "team:c", "team:a", "gpt-anything")] == [
        "team:a",
        "team:b",
        "other",
        "team:a",
        "other",
    ]
