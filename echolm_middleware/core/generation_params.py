"""What a request's generation parameters mean for the cache: pass it through, or route it but never
cache its answer, or neither.

| parameter | what we do | why |
|---|---|---|
| `n` > 1, `logprobs`, `top_logprobs`, `seed` | pass through, untouched | promises about the model named |
| `tools`, `functions` (and tool turns) | pass through, untouched | the answer depends on tool state |
| `stop`, `logit_bias`, `response_format` | route; in the context key; answer never cached | they shape its form |
| `temperature` above `admission.max_temperature` | route; answer never cached | a sample, not the answer |
| `max_tokens`, `max_completion_tokens` | route; cached when whole; no cached answer longer is reused | a limit |
| anything else (`top_p`, `user`, ...) | route; cached when whole | a cut answer ends `length` |

The context key (`core.requests`) includes the shaping parameters, so an example serves only requests
asked with the same ones; as their answers are never cached, such requests find no examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SHAPING = ("stop", "logit_bias", "response_format")
# Every parameter `judge_params` reads: what a door picks out of a request body to hand the engine.
JUDGED_PARAMS = (
    "n",
    "logprobs",
    "top_logprobs",
    "seed",
    *_SHAPING,
    "temperature",
    "max_tokens",
    "max_completion_tokens",
)


@dataclass(frozen=True)
class ParamsVerdict:
    """`pass_reason`: why the request must go to the model it named untouched ("" when it may be routed);
    `not_cached_reason`: why its answer must not become an example ("" when it may); `shaping`: the
    answer-shaping parameters it set, for the context key."""

    pass_reason: str = ""
    not_cached_reason: str = ""
    shaping: Mapping[str, Any] = field(default_factory=dict)


def _set(value: Any) -> bool:
    """A parameter counts as set unless it is absent, None, False or empty."""
    return value is not None and value is not False and value != [] and value != {} and value != ""


def judged_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a request body (or keyword arguments) that `judge_params` reads."""
    return {name: body[name] for name in JUDGED_PARAMS if name in body}


def judge_params(params: Mapping[str, Any], *, max_temperature: float) -> ParamsVerdict:
    """Classify a request's generation parameters (the request body less model, messages, metadata)."""
    n = params.get("n")
    if isinstance(n, int | float) and not isinstance(n, bool) and n > 1:
        return ParamsVerdict(pass_reason=f"n={n} asks the named model for several answers")
    for name in ("logprobs", "top_logprobs", "seed"):
        if _set(params.get(name)):
            return ParamsVerdict(pass_reason=f"{name} is a promise about the named model")
    shaping = {name: params[name] for name in _SHAPING if _set(params.get(name))}
    reason = f"{', '.join(shaping)} shapes the answer" if shaping else ""
    temperature = params.get("temperature")
    if not reason and isinstance(temperature, int | float) and temperature > max_temperature:
        reason = f"temperature {temperature:g} is above {max_temperature:g}"
    return ParamsVerdict(not_cached_reason=reason, shaping=shaping)
