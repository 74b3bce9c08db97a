"""The local tiers count prompt tokens as their own llama.cpp servers do (config.yaml `tokenizer: gguf:...`)."""

from __future__ import annotations

import httpx

from echolm_lab.local_tiers.from_config import local_models_in
from echolm_middleware.backends.token_counters import tier_token_counters
from echolm_middleware.config import read_config_file
from tests.integration.conftest import CONFIG, STRONG, LocalTiers, alias_of, settings_for_tests

TEXTS = (
    "Which city is the capital of France?",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "def area(r):\n    return 3.14159 * r ** 2  # the circle's area",
)


def test_the_strong_tiers_counter_matches_its_servers_own_count(local_tiers: LocalTiers) -> None:
    raw = read_config_file(CONFIG)
    port = dict(local_models_in(raw))[alias_of(STRONG, raw)]
    settings = settings_for_tests()
    counter = tier_token_counters([(t.name, t.tokenizer) for t in settings.tiers], local_tiers.model_list)[STRONG]

    for text in TEXTS:
        # llama-cpp-python's server counts text with the model it serves (its /extras/tokenize/count).
        served = httpx.post(f"http://127.0.0.1:{port}/extras/tokenize/count", json={"input": text}, timeout=30)
        served.raise_for_status()
        assert counter.count(text) == served.json()["count"], text
