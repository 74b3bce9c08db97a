"""Whether a failed call says its tier is failing (down, overloaded, misconfigured) rather than the request.

The engine leaves a failing tier out of routing for a while (`core.tier_health`); a request the tier
refused for being what it is (too long, malformed, against its content policy: a 400, 413 or 422) says
nothing about the tier, and neither does a caller who hung up (a cancellation has no status).
"""

from __future__ import annotations

import contextlib
import functools

# Statuses that say the tier, not the request, is at fault: its key or model name is wrong (401, 403,
# 404), it timed out (408) or is out of capacity (429); and every 5xx.
_TIER_STATUSES = frozenset({401, 403, 404, 408, 429})


@functools.cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    """A call that never got a status: no connection, or none in time. httpx's and openai's own kinds
    where installed (LangChain's chat models raise them as they are; LiteLLM maps them to statuses)."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import httpx

        kinds.append(httpx.TransportError)
    with contextlib.suppress(ImportError):
        import openai

        kinds.append(openai.APIConnectionError)  # openai.APITimeoutError is one
    return tuple(kinds)


def tier_at_fault(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in _TIER_STATUSES
    return isinstance(exc, _transport_errors())
