"""Our decision headers hold only what HTTP allows, whatever the caller put in the request."""

from __future__ import annotations

from echolm_middleware.doors.litellm_common import header_value, response_headers


def test_control_characters_and_non_ascii_in_a_reason_or_model_become_question_marks() -> None:
    summary = {
        "request_id": "abc",
        "action": "pass_through",
        "tier": "strong\r\nx-injected: 1",
        "examples": 0,
        "reason": "non-text content in a \x11 message: é",
    }

    headers = response_headers(summary)

    assert headers["x-echolm-tier"] == "strong??x-injected: 1"
    assert headers["x-echolm-reason"] == "non-text content in a ? message: ?"
    assert all(" " <= char <= "~" for value in headers.values() for char in value)


def test_long_values_are_cut() -> None:
    assert len(header_value("x" * 1000)) == 200
