"""Token counting through litellm, so budgets match what LiteLLM itself counts."""

from __future__ import annotations

from echolm_middleware.backends._lazy import require


class LiteLLMTokenCounter:
    """Counts with litellm's tokenizer for `model` (its bundled tiktoken files: no download)."""

    def __init__(self, model: str = "gpt-3.5-turbo") -> None:
        self._model = model

    def count(self, text: str) -> int:
        litellm = require("litellm", "litellm")
        return int(litellm.token_counter(model=self._model, text=text))
