"""The upkeep's way to ask a tier: a litellm Router over the proxy config's model_list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from echolm_middleware.backends._lazy import require
from echolm_middleware.core.types import Completion


class LiteLLMCompleter:
    """Calls a tier (a model group of the config's model_list) directly, not through a proxy."""

    def __init__(self, model_list: Sequence[Mapping[str, Any]]) -> None:
        litellm = require("litellm", "litellm")
        self._litellm = litellm
        self._router = litellm.Router(model_list=[dict(entry) for entry in model_list], num_retries=0)

    def complete(
        self, tier: str, prompt: str, *, max_tokens: int, temperature: float, instructions: str = ""
    ) -> Completion:
        system = [{"role": "system", "content": instructions}] if instructions else []
        messages = [*system, {"role": "user", "content": prompt}]
        return self.chat(tier, messages, max_tokens=max_tokens, temperature=temperature)

    def chat(
        self, tier: str, messages: Sequence[Mapping[str, Any]], *, max_tokens: int, temperature: float
    ) -> Completion:
        """One chat completion from a tier; the whole conversation as given."""
        response = self._router.completion(
            model=tier,
            messages=[dict(message) for message in messages],
            max_tokens=max_tokens,
            temperature=temperature,
        )
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or 0)
        try:
            cost: float | None = float(self._litellm.completion_cost(completion_response=response))
        except Exception:  # litellm has no price for local or private models
            cost = None
        return Completion(
            text=str(choice.message.content or ""), finish_reason=choice.finish_reason, tokens=tokens, cost_usd=cost
        )
