"""Only whole answers become examples: what the upstream finished normally, that the caller read to its
end, and that answers rather than declines or reports an error.

A cached answer is shown to every later request of its tenant and context, so anything less than a
whole answer (a stream the client hung up on, a reply cut at `max_tokens`, a content filter's stop, a
refusal or an error text returned with status 200) would be served again as if it were the answer.
"""

from __future__ import annotations

import re

from echolm_middleware.core.types import Outcome

# A reply that declines, or an upstream error passed on as text: the common phrasings, anchored at the
# start of the answer (a real answer may quote such words further in).
_NOT_AN_ANSWER = re.compile(
    r"(?is)^\W{0,3}(?:"
    r"(?:i\s*(?:'|’)?\s*m|i\s+am)\s+(?:sorry|afraid)\b[^.\n]{0,60}\b(?:can(?:no|')t|cannot|unable|not\s+able)"
    r"|i\s+(?:can(?:no|')t|cannot|won(?:'|’)t|am\s+unable\s+to|am\s+not\s+able\s+to)\s+"
    r"(?:help|assist|answer|provide|comply|do\s+that)"
    r"|as\s+an\s+ai(?:\s+language\s+model)?\b[^.\n]{0,40}\b(?:can(?:no|')t|cannot|unable|not\s+able|don(?:'|’)t)"
    r"|(?:error|exception|traceback)\b\s*[:(]"
    r"|internal\s+server\s+error\b"
    r"|rate\s+limit(?:ed)?\b[^.\n]{0,20}\bexceeded"
    r")"
)


def why_not_whole(outcome: Outcome) -> str:
    """Why the answer may not be cached ("" when it is whole)."""
    if outcome.cut_short:
        return outcome.cut_short
    if outcome.refused:
        return "the tier refused"
    if outcome.finish_reason != "stop":
        reason = outcome.finish_reason
        return "no finish reason from the upstream" if reason is None else f"finish reason {reason!r}"
    if not outcome.answer.strip():
        return "empty answer"
    if _NOT_AN_ANSWER.search(outcome.answer):
        return "a refusal or an error, not an answer"
    return ""
