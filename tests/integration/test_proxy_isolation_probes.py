"""400 adversarial probes through the real proxy: one tenant never reaches another tenant's examples.

Tenant A's store holds ten answers with canaries. Tenant B, authenticated by its own key, sends the same
prompts and near-duplicates of them while claiming to be A in every field it controls: headers, request
metadata, the `user` field, our own summary key, crafted ids. LiteLLM's `mock_response` answers, so a probe
costs no inference; our hook still embeds, retrieves, routes and logs its decision for each one, and the
check reads those decisions: the tenant each was made for, and the examples it used.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.config import load_settings
from echolm_middleware.core.engine import admitted_id
from echolm_middleware.factory import build_engine
from tests.integration.conftest import CONFIG, STRONG, ProxyFactory, ProxyUnderTest, config_with_team_keys
from tests.integration.tenant_auth import TEAMS

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "sk-tenant-a", "sk-tenant-b"
TENANT_A, TENANT_B = f"team:{TEAMS[KEY_A]}", f"team:{TEAMS[KEY_B]}"
VICTIM_PROMPTS = [
    "What is the boiling point of water at sea level in Celsius?",
    "Who painted the Mona Lisa?",
    "What is the capital city of Australia?",
    "How many moons does Mars have?",
    "What is the chemical symbol for sodium?",
    "Which year did the Berlin Wall fall?",
    "What is the tallest mountain in Africa?",
    "Who wrote the novel Pride and Prejudice?",
    "What is the largest organ of the human body?",
    "How many strings does a standard guitar have?",
]
REWRITES = [
    lambda p: p,
    lambda p: p.lower().rstrip("?"),
    lambda p: f"Please tell me: {p}",
    lambda p: p.replace("What is", "What's"),
    lambda p: f"{p} Answer briefly.",
]
CLAIMS_OF_A = [TENANT_A, TEAMS[KEY_A], KEY_A, f"key:{KEY_A}", f"user:{TEAMS[KEY_A]}", f" {TENANT_A} "]


def _spoofs() -> list[dict[str, Any]]:
    """Twenty ways a caller can claim to be tenant A in what it sends."""
    spoofs: list[dict[str, Any]] = []
    for claim in CLAIMS_OF_A[:4]:
        spoofs.append({"extra_headers": {"x-echolm-tenant": claim, "x-litellm-team-id": claim}})
        spoofs.append({"extra_body": {"metadata": {"echolm_tenant": claim, "tenant": claim, "team_id": claim}}})
        spoofs.append({"extra_body": {"user": claim, "metadata": {"user_api_key_team_id": claim}}})
    for claim in CLAIMS_OF_A[4:]:
        spoofs.append({"extra_body": {"metadata": {"echolm": {"tenant": claim, "tier": "cheap", "request_id": "x"}}}})
        # HTTP clients refuse header values with outer spaces: the padded claim goes in the body there.
        spoofs.append(
            {"extra_headers": {"x-tenant-id": claim.strip(), "x-user-id": claim.strip()}, "extra_body": {"user": claim}}
        )
    spoofs.append({"extra_body": {"metadata": {"echolm_tenant": TENANT_A + "\u200b"}}})  # zero-width look-alike
    spoofs.append({"extra_body": {"metadata": {"echolm_tenant": "team:team-\u0430"}}})  # Cyrillic a
    spoofs.append({"extra_headers": {"x-echolm-tenant": "team:team-a%00"}, "extra_body": {"user": "../team-a"}})
    spoofs.append({"extra_body": {"metadata": {"echolm_bypass": False, "echolm_tenant": TENANT_A}}})
    assert len(spoofs) == 20
    return spoofs


def _probe(client: Any, prompt: str, spoof: dict[str, Any]) -> tuple[str, str]:
    extra_body = dict(spoof.get("extra_body", {}))
    extra_body["mock_response"] = "noted"
    raw = client.chat.completions.with_raw_response.create(
        model=STRONG,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        extra_headers=spoof.get("extra_headers"),
        extra_body=extra_body,
    )
    return raw.headers.get("x-echolm-request-id", ""), raw.parse().choices[0].message.content or ""


def test_four_hundred_probes_through_the_proxy_reach_none_of_another_tenants_examples(
    start_proxy_for: ProxyFactory, embedder: MiniLMEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("ECHOLM_STORE__PATH", str(state_dir / "chroma"))
    monkeypatch.setenv("ECHOLM_STATE__PATH", str(state_dir / "seeding.db"))
    settings, raw = load_settings(CONFIG)
    seeding = build_engine(settings, raw["model_list"], embedder=embedder)
    for n, prompt in enumerate(VICTIM_PROMPTS):
        assert seeding.admit(TENANT_A, prompt, f"CANARY-{n}: the answer to this question.", STRONG)
    victim_ids = {admitted_id(TENANT_A, prompt) for prompt in VICTIM_PROMPTS}
    del seeding
    spoofs = _spoofs()
    # Every spoof on every prompt, twice, under rewrites taken in turn: what the proxy adds over the
    # in-process probes (tests/contract/test_isolation_probes.py: 1,000 of them) is the spoofed fields.
    rewrites = itertools.cycle(REWRITES)
    probes = [
        (next(rewrites)(prompt), spoof) for prompt, spoof in itertools.product(VICTIM_PROMPTS, spoofs) for _ in range(2)
    ]
    every_text = {rewrite(prompt) for prompt in VICTIM_PROMPTS for rewrite in REWRITES}
    assert len(probes) == 400 and {text for text, _ in probes} == every_text

    proxy = start_proxy_for(config=config_with_team_keys(tmp_path), state_dir=state_dir)
    with proxy.client(KEY_B) as as_b, ThreadPoolExecutor(4) as pool:  # one client and pool for every probe
        results = list(pool.map(lambda probe: _probe(as_b, *probe), probes))

    # Every probe was answered by the mock (tenant_auth lets both teams ask for it): no inference ran.
    assert all(answer == "noted" for _, answer in results)
    state = SQLiteState(state_dir / "state.db")
    try:
        decisions = [state.get(request_id) for request_id, _ in results]
        assert all(decision is not None for decision in decisions)  # our hook decided every probe
        assert {decision.tenant for decision in decisions if decision} == {TENANT_B}
        used = {trace.id for decision in decisions if decision for trace in decision.examples}
        assert not used & victim_ids  # no probe's decision used one of A's examples
        # The control: A's own paraphrase does retrieve A's example, so retrieval itself works.
        request_id, _ = _probe_as_a(proxy, "what is the capital city of australia")
        control = state.get(request_id)
        assert control is not None and control.tenant == TENANT_A
        assert {trace.id for trace in control.examples} & victim_ids
    finally:
        state.close()


def _probe_as_a(proxy: ProxyUnderTest, prompt: str) -> tuple[str, str]:
    with proxy.client(KEY_A) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=STRONG,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=4,
            extra_body={"mock_response": "noted"},
        )
        return raw.headers.get("x-echolm-request-id", ""), raw.parse().choices[0].message.content or ""
