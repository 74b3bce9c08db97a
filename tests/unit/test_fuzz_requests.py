"""Property-based fuzzing of what callers may send: message shapes, roles, content parts, sizes, encodings.

Whatever arrives, the engine decides without raising (route or a documented pass-through), records
without raising, and the store only ever holds well-formed examples of the tenant that admitted them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echolm_middleware.core.types import ChatRequest, Outcome
from tests.unit.conftest import CHEAP, STRONG

# Text as callers send it: any code point, lone surrogates included (JSON can carry "\ud800").
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=300)
ROLES = st.one_of(
    st.sampled_from(["user", "assistant", "system", "developer", "tool", "function"]), TEXT, st.none(), st.integers()
)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": TEXT})}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.none(), st.integers(), st.lists(TEXT))}),
    st.dictionaries(TEXT, st.one_of(TEXT, st.integers(), st.none()), max_size=3),
    TEXT,
    st.integers(),
)
CONTENT = st.one_of(TEXT, st.none(), st.integers(), st.floats(), st.lists(PART, max_size=4), st.binary(max_size=20))
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLES, "content": CONTENT},
        optional={
            "name": TEXT,
            "tool_calls": st.lists(st.dictionaries(TEXT, TEXT, max_size=2), max_size=2),
            "function_call": st.one_of(st.none(), st.dictionaries(TEXT, TEXT, max_size=2)),
            "extra": st.integers(),
        },
    ),
    TEXT,
    st.none(),
    st.lists(TEXT, max_size=2),
)
MESSAGES = st.lists(MESSAGE, max_size=6)
# A conversation that is routable most of the time, so the routing and recording paths are fuzzed too.
PLAUSIBLE = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}), max_size=4
).map(lambda history: [*history, {"role": "user", "content": "What is the capital of France?"}])
TENANT = st.one_of(st.sampled_from(["A", "B"]), TEXT)
MODEL = st.one_of(st.sampled_from([CHEAP.name, STRONG.name]), TEXT)
ANSWER = st.one_of(TEXT, st.just("Paris."))
FINISH = st.one_of(st.none(), st.sampled_from(["stop", "length", "content_filter", "tool_calls"]), TEXT)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_store(kit: Any, tenants: set[str]) -> None:
    for tenant in tenants:
        for example in kit.store.examples(tenant):
            assert example.prompt.strip() and example.answer.strip()
            example.prompt.encode("utf-8")  # nothing unencodable was ever stored
            example.answer.encode("utf-8")
            assert example.source_tier == STRONG.name


@FUZZ
@given(messages=st.one_of(MESSAGES, PLAUSIBLE), tenant=TENANT, model=MODEL, tools=st.booleans(), data=st.data())
def test_any_request_is_decided_and_recorded_without_raising(
    make_engine: Any, messages: Any, tenant: str, model: str, tools: bool, data: st.DataObject
) -> None:
    kit = make_engine()
    kit.engine.admit("A", "What is the capital of France?", "Paris.", STRONG.name)

    prepared = kit.engine.prepare(ChatRequest(tenant=tenant, model=model, messages=messages, has_tools=tools))

    assert prepared.decision.action in ("route", "reuse", "pass_through")
    if prepared.decision.action == "pass_through":
        assert prepared.tier == model
        assert prepared.messages == list(messages)  # untouched
    elif prepared.decision.action == "reuse":  # the cached answer, as it was admitted
        assert prepared.reused_answer == "Paris."
    else:
        assert prepared.tier in (CHEAP.name, STRONG.name)
    outcome = Outcome(prepared.decision.request_id, prepared.tier, data.draw(ANSWER), data.draw(FINISH))
    assert kit.engine.record(outcome) in ("admitted", "offload_counted", "reuse_counted", "skipped", "duplicate")
    _check_store(kit, {"A", tenant})
    assert all(example.answer == "Paris." for example in kit.store.examples("A") if tenant != "A")
