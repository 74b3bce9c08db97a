"""What the PII scrub takes out of a text before it is cached, and what it leaves alone."""

from __future__ import annotations

import pytest

from echolm_middleware.core.pii import scrub


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+bank@example.co.uk today", "Write to [EMAIL] today"),
        ("Call +44 20 7946 0958 or (555) 123-4567.", "Call [PHONE] or [PHONE]."),
        ("My number is 555-867-5309", "My number is [PHONE]"),
        ("Card 4111 1111 1111 1111 was declined", "Card [CARD_NUMBER] was declined"),
        ("card=5500-0000-0000-0004", "card=[CARD_NUMBER]"),
        ("use sk-proj-AbCdEf0123456789xyzXYZ as the key", "use [SECRET] as the key"),
        ("AWS AKIAIOSFODNN7EXAMPLE here", "AWS [SECRET] here"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ012345", "token [SECRET]"),
        ('api_key = "hunter2hunter2"', 'api_key = "[SECRET]"'),
        ("password: correct-horse-battery", "password: [SECRET]"),
        ("Authorization: Bearer abcdefghijklmnop", "Authorization: Bearer [SECRET]"),
    ],
)
def test_personal_data_and_secrets_become_placeholders(text: str, expected: str) -> None:
    scrubbed = scrub(text)

    assert scrubbed.text == expected
    assert scrubbed.found


@pytest.mark.parametrize(
    "text",
    [
        "The Treaty of Versailles was signed in 1919.",
        "Between 1939-1945 about 70 million served.",
        "Set max_tokens to 2048 and retry after 30 s.",
        "Version 3.11.7 of Python; ISBN-free text.",
        "4111 1111 1111 1112 fails the Luhn check",  # digits that are no card number stay
        "Transfer 1 500 000 EUR",
        "An @decorator and user@localhost are code, not addresses",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    scrubbed = scrub(text)

    assert scrubbed.text == text
    assert not scrubbed.found


def test_several_kinds_in_one_text_are_all_replaced() -> None:
    text = "Reach me at a@b.io or +1 415 555 0100; card 4111-1111-1111-1111; key sk-ant-0123456789abcdefXYZ."

    assert scrub(text).text == "Reach me at [EMAIL] or [PHONE]; card [CARD_NUMBER]; key [SECRET]."
