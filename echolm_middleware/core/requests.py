"""Which requests we touch: a text-only chat whose last turn is the user's; everything else passes through."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from echolm_middleware.core.types import ChatRequest, Message

# Roles and keys that mean a tool-using conversation: its next turn depends on tool state we cannot
# see in an example, so such requests go to the model they named, untouched.
_TOOL_ROLES = frozenset({"tool", "function"})
_TOOL_KEYS = ("tool_calls", "function_call")


@dataclass(frozen=True)
class RequestView:
    """The parts of a request the engine uses, or why it must pass through."""

    routable: bool
    reason: str
    question: str = ""
    query: str = ""
    text: str = ""
    chars: int = 0
    # The system (and developer) messages: the framing an answer was given under, kept with an example
    # so that a replay asks the strongest tier the same request, not the bare question.
    instructions: str = ""
    # The turns before the question (role, text), system messages aside: part of the context an answer
    # was given in, so part of the key an example is kept under (`context_key`).
    history: tuple[tuple[str, str], ...] = ()


def message_text(content: Any) -> str | None:
    """The text of a message's content, or None when it holds anything but text."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


def is_valid_utf8(text: str) -> bool:
    # JSON allows lone surrogates ("\ud800"); they cannot be encoded, embedded or stored.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pass(reason: str) -> RequestView:
    return RequestView(routable=False, reason=reason)


def inspect_request(request: ChatRequest, *, max_messages: int, context_turns: int) -> RequestView:
    """Decide whether a chat request is one we can augment and route, and extract its query text."""
    messages: Sequence[Message] = request.messages
    if not messages:
        return _pass("empty messages")
    if len(messages) > max_messages:
        return _pass(f"too many messages ({len(messages)} > {max_messages})")
    if request.has_tools:
        return _pass("request offers tools")
    user_turns: list[str] = []
    texts: list[str] = []
    instructions: list[str] = []
    history: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            return _pass("a message is not an object")
        role = message.get("role")
        if role in _TOOL_ROLES or any(message.get(key) for key in _TOOL_KEYS):
            return _pass("conversation contains tool calls")
        text = message_text(message.get("content"))
        if text is None:
            return _pass(f"non-text content in a {role} message")
        if not is_valid_utf8(text):
            return _pass("text is not valid UTF-8")
        texts.append(text)
        if role in ("system", "developer"):
            if text.strip():
                instructions.append(text.strip())
        else:
            history.append((str(role), text))
            if role == "user":
                user_turns.append(text)
    last = messages[-1]
    if last.get("role") != "user":
        return _pass("last turn is not from the user")
    question = user_turns[-1].strip()
    if not question:
        return _pass("empty question")
    earlier = [turn.strip() for turn in user_turns[:-1] if turn.strip()]
    context = earlier[-context_turns:] if context_turns else []
    query = "\n".join([*context, question])
    text = "\n".join(texts)
    return RequestView(
        routable=True,
        reason="text chat",
        question=question,
        query=query,
        text=text,
        chars=len(text),
        instructions="\n\n".join(instructions),
        history=tuple(history[:-1]),  # the last is the question itself
    )


def context_key(instructions: str, history: Sequence[tuple[str, str]], shaping: Mapping[str, Any]) -> str:
    """The key of the context an answer was given in: system messages, earlier turns and the parameters
    that shape the answer. An example serves a request only under the same key, so an answer about
    one caller's document or conversation never reaches a request that lacks it or has another."""
    canonical = json.dumps(
        {"instructions": instructions, "history": [list(turn) for turn in history], "shaping": shaping},
        sort_keys=True,
        ensure_ascii=False,
        default=repr,
    )
    return hashlib.sha256(canonical.encode("utf-8", "backslashreplace")).hexdigest()[:32]
