"""What the PII scrub takes out of a text before it is cached, and what it leaves alone."""

from __future__ import annotations

from typing import Any

import pytest

from echolm_middleware.core.pii import scrub
from tests.unit.conftest import ADMISSION, EngineFactory


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


# ---- what the engine keeps: the cache and the state database alike ------------------------------------

SYSTEM_WITH_PII = "You answer for Jane (jane.doe@example.com, +44 20 7946 0958)."
QUESTION_WITH_PII = "Is card 4111 1111 1111 1111 still blocked?"


def _asked(kit: Any) -> Any:
    from echolm_middleware.core.types import ChatRequest, Outcome

    messages = [{"role": "system", "content": SYSTEM_WITH_PII}, {"role": "user", "content": QUESTION_WITH_PII}]
    prepared = kit.engine.prepare(ChatRequest("A", "strong", messages))
    kit.engine.record(Outcome(prepared.decision.request_id, "strong", "It is blocked until Monday.", "stop"))
    return kit.state.get(prepared.decision.request_id)


def test_with_scrubbing_on_the_state_database_keeps_the_scrubbed_question_and_system_prompt(
    make_engine: EngineFactory,
) -> None:
    kit = make_engine(admission=ADMISSION.model_copy(update={"pii": "scrub"}))

    kept = _asked(kit)

    assert kept.query == "Is card [CARD_NUMBER] still blocked?"
    assert kept.instructions == "You answer for Jane ([EMAIL], [PHONE])."
    (example,) = kit.store.examples("A")
    assert (example.prompt, example.instructions) == (kept.query, kept.instructions)
    stored = [c for c in kit.store.nearest("A", kit.embedder.embed([kept.query])[0], 1)]
    assert stored and stored[0].similarity > 0.999  # embedded from the scrubbed text it holds


def test_with_refuse_a_prompt_holding_personal_data_is_kept_scrubbed_and_never_cached(
    make_engine: EngineFactory,
) -> None:
    kit = make_engine(admission=ADMISSION.model_copy(update={"pii": "refuse"}))

    kept = _asked(kit)

    assert kept.not_cached == "personal data in the prompt (admission.pii: refuse)"
    assert "4111" not in kept.query and "jane.doe" not in kept.instructions
    assert kit.store.count("A") == 0


def test_with_keep_the_state_database_keeps_the_question_as_asked(make_engine: EngineFactory) -> None:
    kit = make_engine(admission=ADMISSION.model_copy(update={"pii": "keep"}))

    kept = _asked(kit)

    assert (kept.query, kept.instructions) == (QUESTION_WITH_PII, SYSTEM_WITH_PII)
    assert kit.store.count("A") == 1
