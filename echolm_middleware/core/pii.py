"""Personal data and secrets taken out of a text before it is cached (`admission.pii`).

A cached answer is shown to later requests of the same tenant, so an email address, a phone or card
number or an API key in it would reach whoever asks something similar. Each match becomes a typed
placeholder ("[EMAIL]"), which keeps the example readable as an example. Patterns, not a model: they
catch the common formats and miss unusual ones, so `refuse` (cache nothing that matched) is there for
tenants that must not risk it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Secrets first: their bodies contain digits a phone or card pattern would otherwise claim.
_SECRETS = re.compile(
    r"\b(?:"
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic, LiteLLM virtual keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWTs
    r")"
)
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b(api[_-]?key|secret|token|password|passwd|bearer)(\s*[:=]\s*|\s+)(['\"]?)([^\s'\"]{8,})\3"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# A number with a leading + or separators between its groups, 9-15 digits in all (E.164's bound).
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD_NUMBER]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    looks_dialled = text.startswith(("+", "(")) or len(digits) >= 10
    return "[PHONE]" if 9 <= len(digits) <= 15 and looks_dialled else text


_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_SECRETS, lambda m: "[SECRET]"),
    (_ASSIGNED_SECRET, lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}[SECRET]{m.group(3)}"),
    (_EMAIL, lambda m: "[EMAIL]"),
    (_CARD, _card),
    (_PHONE, _phone),
)


@dataclass(frozen=True)
class Scrubbed:
    text: str
    found: bool  # whether anything was replaced


def scrub(text: str) -> Scrubbed:
    """`text` with emails, phone and card numbers and secrets replaced by placeholders."""
    result = text
    for pattern, replace in _RULES:
        result = pattern.sub(replace, result)
    return Scrubbed(result, result != text)
