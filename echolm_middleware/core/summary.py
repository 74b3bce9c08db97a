"""What a caller, a log event and a metric see of one decision: a typed, frozen value the doors only read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, get_args

from echolm_middleware.core.types import Action, Decision

_ACTIONS = frozenset(get_args(Action))
# What a failure's text may carry that the caller must not read: our servers' addresses and our files.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_PATH = re.compile(r"(?<![\w.])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?")


def public_reason(reason: str) -> str:
    """A reason as the caller may read it: addresses and file paths from our own errors left out."""
    return _PATH.sub("<path>", _URL.sub("<url>", reason))


def header_value(value: object, limit: int = 200) -> str:
    """A value HTTP allows in a header: printable ASCII only. Reasons and model names can carry what the
    caller sent (a role of "\x11", a model name with a newline), which would make the server drop the
    connection instead of answering."""
    text = str(value)
    return "".join(char if " " <= char <= "~" else "?" for char in text[:limit]).strip()


@dataclass(frozen=True)
class DecisionSummary:
    """One request's decision as it leaves the engine: where it went, with how many examples, and why."""

    request_id: str
    action: Action
    tier: str
    examples: int = 0
    example_tokens: int = 0
    best_similarity: float | None = None
    reason: str = ""
    # For our metrics only; never sent back to the caller (see `caller_view`).
    tenant: str = ""
    # What our part added to the request's latency, as the door measured it (thread hops and waits included).
    overhead_ms: float | None = None
    # Whether the caller sees `best_similarity` (requests.best_similarity_header); our metrics always do.
    similarity_shown: bool = False
    # The model the request named (what LiteLLM's own log would otherwise show only as `tier`).
    requested_model: str = ""

    @classmethod
    def of(cls, decision: Decision) -> DecisionSummary:
        return cls(
            request_id=decision.request_id,
            requested_model=decision.requested_model,
            action=decision.action,
            tier=decision.tier,
            examples=len(decision.examples),
            example_tokens=decision.example_tokens,
            best_similarity=None if decision.best_similarity is None else round(decision.best_similarity, 4),
            similarity_shown=decision.similarity_shown,
            reason=decision.reason,
            tenant=decision.tenant,
        )

    @classmethod
    def without_decision(cls, model: str, action: Action, reason: str, tenant: str = "") -> DecisionSummary:
        """No decision could be kept (the engine is not up yet, or the caller opted out before it was)."""
        return cls(request_id="", action=action, tier=model, reason=reason, tenant=tenant, requested_model=model)

    @property
    def routed(self) -> bool:
        return self.action == "route"

    def chosen_tier_failed(self, served_by: str) -> DecisionSummary:
        """The tier we chose failed and `served_by`, the model the caller named, answered instead."""
        return replace(self, action="fail_open", tier=served_by, reason=f"chosen tier {self.tier} failed")

    def with_overhead(self, overhead_ms: float) -> DecisionSummary:
        return replace(self, overhead_ms=round(overhead_ms, 2))

    def caller_view(self) -> dict[str, Any]:
        """The summary as the caller may see it in a response body: the tenant label stays with us."""
        view = asdict(self)
        del view["tenant"], view["similarity_shown"]
        view["reason"] = public_reason(self.reason)
        if not self.similarity_shown:
            view["best_similarity"] = None
        if view["overhead_ms"] is None:
            del view["overhead_ms"]
        return view

    def headers(self) -> dict[str, str]:
        """HTTP response headers that show the caller what we decided."""
        headers = {
            "x-echolm-request-id": header_value(self.request_id),
            "x-echolm-action": header_value(self.action),
            "x-echolm-tier": header_value(self.tier),
            "x-echolm-examples": header_value(self.examples),
            "x-echolm-example-tokens": header_value(self.example_tokens),
        }
        if self.overhead_ms is not None:
            headers["x-echolm-overhead-ms"] = f"{self.overhead_ms:.2f}"
        if self.best_similarity is not None and self.similarity_shown:
            headers["x-echolm-best-similarity"] = f"{self.best_similarity:.4f}"
        # A routed request says why only where it was routed around something (a failing tier).
        if not self.routed or self.reason not in ("", "routed"):
            headers["x-echolm-reason"] = header_value(public_reason(self.reason))
        return headers

    def to_metadata(self) -> dict[str, Any]:
        """A plain dict, for hosts that carry it between callbacks in request metadata (and may serialise it)."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, value: object) -> DecisionSummary | None:
        """The summary `to_metadata` wrote, or None for anything else (the doors drop what a caller sent)."""
        if isinstance(value, DecisionSummary):
            return value
        if not isinstance(value, Mapping) or value.get("action") not in _ACTIONS:
            return None
        fields = {key: value.get(key, default) for key, default in _DEFAULTS.items()}
        for key, kinds in _KINDS.items():
            if not isinstance(fields[key], kinds) or isinstance(fields[key], bool):
                return None
        if not isinstance(fields["similarity_shown"], bool):
            return None
        return cls(**fields)


_DEFAULTS: dict[str, Any] = {
    "request_id": None,
    "action": None,
    "tier": None,
    "examples": 0,
    "example_tokens": 0,
    "best_similarity": None,
    "reason": "",
    "tenant": "",
    "overhead_ms": None,
    "similarity_shown": False,
    "requested_model": "",
}
_KINDS: dict[str, type | tuple[type, ...]] = {
    "request_id": str,
    "tier": str,
    "examples": int,
    "example_tokens": int,
    "best_similarity": (float, int, type(None)),
    "reason": str,
    "tenant": str,
    "overhead_ms": (float, int, type(None)),
    "requested_model": str,
}
