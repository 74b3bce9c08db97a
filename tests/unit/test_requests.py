"""Which requests the engine touches, and the query text it extracts from the ones it does."""

from __future__ import annotations

from typing import Any

import pytest

from echolm_middleware.core.requests import inspect_request, message_text
from echolm_middleware.core.types import ChatRequest


def _inspect(messages: list[Any], *, has_tools: bool = False, max_messages: int = 8, context_turns: int = 0):
    request = ChatRequest(tenant="t", model="strong", messages=messages, has_tools=has_tools)
    return inspect_request(request, max_messages=max_messages, context_turns=context_turns)


USER = {"role": "user", "content": "What is the capital of France?"}

PASS_THROUGH = [
    pytest.param([], {}, "empty messages", id="empty-messages"),
    pytest.param([USER, USER, USER], {"max_messages": 2}, "too many messages (3 > 2)", id="too-many-messages"),
    pytest.param([USER], {"has_tools": True}, "request offers tools", id="tools-offered"),
    pytest.param(
        [USER, {"role": "tool", "tool_call_id": "c1", "content": "42"}, USER],
        {},
        "conversation contains tool calls",
        id="tool-role",
    ),
    pytest.param(
        [USER, {"role": "function", "name": "f", "content": "42"}, USER],
        {},
        "conversation contains tool calls",
        id="function-role",
    ),
    pytest.param(
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            USER,
        ],
        {},
        "conversation contains tool calls",
        id="tool-calls-in-history",
    ),
    pytest.param(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ],
        {},
        "non-text content in a user message",
        id="image-url-part",
    ),
    pytest.param(
        [USER, {"role": "assistant", "content": "Paris."}],
        {},
        "last turn is not from the user",
        id="assistant-last",
    ),
    pytest.param([{"role": "system", "content": "Be brief."}], {}, "last turn is not from the user", id="system-only"),
    pytest.param([{"role": "user", "content": "   \n\t"}], {}, "empty question", id="blank-question"),
    pytest.param([{"role": "user", "content": ""}], {}, "empty question", id="empty-question"),
    pytest.param([{"role": "user", "content": "\ud800"}], {}, "text is not valid UTF-8", id="lone-surrogate"),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": "ok \ud800"}]}],
        {},
        "text is not valid UTF-8",
        id="lone-surrogate-in-part",
    ),
    pytest.param([{"role": "user", "content": 42}], {}, "non-text content in a user message", id="number-content"),
    pytest.param(["just a string"], {}, "a message is not an object", id="message-not-mapping"),
]


@pytest.mark.parametrize(("messages", "options", "reason"), PASS_THROUGH)
def test_requests_we_cannot_augment_pass_through_with_a_reason(
    messages: list[Any], options: dict[str, Any], reason: str
) -> None:
    view = _inspect(messages, **options)

    assert view.routable is False
    assert view.reason == reason
    assert view.query == ""


def test_a_plain_text_chat_is_routable_with_the_last_user_turn_as_query() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "  What is the capital of France?  "},
    ]

    view = _inspect(messages)

    assert view.routable is True
    assert view.reason == "text chat"
    assert view.question == "What is the capital of France?"
    assert view.query == "What is the capital of France?"
    assert view.text == "Be brief.\nHi\nHello!\n  What is the capital of France?  "
    assert view.chars == len(view.text)


def test_text_content_parts_are_joined_into_the_question() -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Capital of"}, {"type": "text", "text": "France?"}],
        }
    ]

    view = _inspect(messages)

    assert view.routable is True
    assert view.question == "Capital of\nFrance?"


def test_exactly_max_messages_is_still_routable() -> None:
    assert _inspect([USER, USER], max_messages=2).routable is True


def test_a_falsy_tool_calls_key_is_not_a_tool_conversation() -> None:
    messages = [USER, {"role": "assistant", "content": "Paris.", "tool_calls": []}, USER]

    assert _inspect(messages).routable is True


@pytest.mark.parametrize(
    ("context_turns", "expected"),
    [
        (0, "and of Spain?"),
        (1, "capital of Italy\nand of Spain?"),
        (2, "capital of France\ncapital of Italy\nand of Spain?"),
        (5, "capital of France\ncapital of Italy\nand of Spain?"),
    ],
)
def test_query_context_turns_prepends_the_latest_earlier_user_turns(context_turns: int, expected: str) -> None:
    messages = [
        {"role": "user", "content": "capital of France"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "   "},  # blank turns add nothing to the query
        {"role": "user", "content": "capital of Italy"},
        {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "and of Spain?"},
    ]

    view = _inspect(messages, context_turns=context_turns)

    assert view.question == "and of Spain?"
    assert view.query == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain", "plain"),
        ([], ""),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], None),
        ([{"type": "text", "text": None}], None),
        (["not a part"], None),
        (b"bytes", None),
        (None, None),
    ],
)
def test_message_text(content: Any, expected: str | None) -> None:
    assert message_text(content) == expected
