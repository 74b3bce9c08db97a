"""Token counting with each tier's own tokenizer: LiteLLM's for the tier's model, or a local file's.

A tier's `tokenizer` setting says which (config.py `TierSettings.tokenizer`):

- unset: LiteLLM's counter for the model the tier's deployment names, so our budgets and figures count
  as LiteLLM itself counts for that deployment (tiktoken where LiteLLM knows no closer tokenizer);
- `litellm:<model>`: LiteLLM's counter for that model;
- `gguf:<path>`: the vocabulary stored in a GGUF model file, read by llama-cpp-python (the local
  tiers' own tokenizer, no download);
- `tokenizer-json:<path>`: a Hugging Face `tokenizer.json` file (a model served by vLLM or TGI ships one).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from echolm_middleware.backends._lazy import require
from echolm_middleware.core.ports import TokenCounter
from echolm_middleware.errors import ConfigError

# What LiteLLM counts with when a deployment names no model (and the counter before tiers had their own).
DEFAULT_MODEL = "gpt-3.5-turbo"


class LiteLLMTokenCounter:
    """Counts with LiteLLM's tokenizer for `model`.

    The tokenizer is selected once, on first use, and kept: for some model names LiteLLM fetches a
    Hugging Face tokenizer, and on a host without network every count would otherwise try again before
    falling back to tiktoken.
    """

    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self._selected: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._selected is None:
                litellm_utils = require("litellm.utils", "litellm")
                select = getattr(litellm_utils, "_select_tokenizer", None)
                # `_select_tokenizer` is private; a LiteLLM without it counts by model name on every call.
                self._selected = select(model=self.model) if select is not None else False
            return self._selected

    def count(self, text: str) -> int:
        litellm = require("litellm", "litellm")
        selected = self._tokenizer()
        if selected is False:
            return int(litellm.token_counter(model=self.model, text=text))
        return int(litellm.token_counter(model=self.model, custom_tokenizer=selected, text=text))


class GGUFTokenCounter:
    """Counts with the vocabulary of a GGUF model file (llama-cpp-python, loaded vocabulary only)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._vocab: Any = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        # One call at a time, the first one loading the vocabulary: the engine counts from several threads,
        # and llama.cpp does not promise that one model's tokenizer may be entered by several at once (a
        # counted prompt takes well under 1 ms).
        with self._lock:
            if self._vocab is None:
                llama_cpp = require("llama_cpp", "local")
                self._vocab = llama_cpp.Llama(model_path=self.path, vocab_only=True, verbose=False)
                # Freed before the interpreter tears down the module its finalizer calls into (it would
                # print a TypeError at every exit otherwise).
                atexit.register(self._vocab.close)
            # As the text would sit inside a chat prompt: no BOS of its own, special-token text read as text.
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


class TokenizerJsonCounter:
    """Counts with a Hugging Face `tokenizer.json` file (the `tokenizers` library LiteLLM brings)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        with self._lock:
            if self._tokenizer is None:
                tokenizers = require("tokenizers", "litellm")
                tokenizer = tokenizers.Tokenizer.from_file(self.path)
                # A file made for an encoder may pad or cut every input to a fixed length (MiniLM's pads
                # to 128): a count wants neither.
                tokenizer.no_padding()
                tokenizer.no_truncation()
                self._tokenizer = tokenizer
        # As the text would sit inside a chat prompt: without the special tokens that open and close an input.
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def token_counter(spec: str | None, deployment_model: str | None) -> TokenCounter:
    """The counter a tier's `tokenizer` setting names (module docstring); a bad setting is a ConfigError."""
    if spec is None:
        return LiteLLMTokenCounter(deployment_model or DEFAULT_MODEL)
    kind, _, value = spec.partition(":")
    if not value:
        raise ConfigError(f"tokenizer {spec!r}: use litellm:<model>, gguf:<path> or tokenizer-json:<path>")
    if kind == "litellm":
        return LiteLLMTokenCounter(value)
    path = os.path.expanduser(os.path.expandvars(value))
    if kind not in ("gguf", "tokenizer-json"):
        raise ConfigError(f"tokenizer {spec!r}: unknown kind {kind!r} (litellm, gguf or tokenizer-json)")
    if not os.path.isfile(path):
        raise ConfigError(f"tokenizer {spec!r}: no such file {path!r}")
    return GGUFTokenCounter(path) if kind == "gguf" else TokenizerJsonCounter(path)


def tier_token_counters(
    tiers: Sequence[tuple[str, str | None]], model_list: Sequence[Mapping[str, Any]]
) -> dict[str, TokenCounter]:
    """Each tier's counter, from (tier name, its `tokenizer` setting) and the deployments of the proxy."""
    counters: dict[str, TokenCounter] = {}
    for name, spec in tiers:
        deployment = next((entry for entry in model_list if entry.get("model_name") == name), None)
        model = (deployment or {}).get("litellm_params", {}).get("model") if deployment else None
        counters[name] = token_counter(spec, model)
    return counters
