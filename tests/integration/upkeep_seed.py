"""Seed a store with deliberately degraded examples worth replaying (run as its own process).

    python -m tests.integration.upkeep_seed CONFIG N

Chroma's embedded client belongs to one process at a time, so tests that then run `echolm upkeep`
as a subprocess seed the store from a process of its own too. Prints the seeded prompts as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from echolm_middleware.config import load_settings
from echolm_middleware.core.engine import admitted_id
from echolm_middleware.factory import build_engine

QUESTIONS = [
    "What is the capital of Japan?",
    "Who wrote the novel Pride and Prejudice?",
    "What is the chemical symbol for gold?",
    "How many continents are there on Earth?",
    "What is the largest ocean on Earth?",
    "Who painted the ceiling of the Sistine Chapel?",
]
DEGRADED = "I am not sure."


def seed(config: Path, count: int, tenant: str = "default") -> list[str]:
    settings, raw = load_settings(config)
    engine = build_engine(settings, raw.get("model_list") or [])
    now = time.time()
    prompts = QUESTIONS[:count]
    for rank, prompt in enumerate(prompts):
        engine.admit(tenant, prompt, DEGRADED, settings.tiers[0].name)
        # Shown often and still needing the big model: high gain, first in replay order.
        engine.store.modify(
            tenant,
            [admitted_id(tenant, prompt)],
            lambda e, g=0.9 - rank * 0.05: replace(
                e, gain=g, uses=40, selected=40, quality=0.3, created_at=now - 10 * 86400
            ),
        )
    return prompts


if __name__ == "__main__":
    print(json.dumps(seed(Path(sys.argv[1]), int(sys.argv[2]))))
