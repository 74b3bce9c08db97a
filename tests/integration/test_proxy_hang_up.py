"""A client that hangs up a stream before its first token leaves no load behind, through a real proxy.

LiteLLM fires neither a success nor a failure event for a stream that sent nothing before the client
left; the tier would count the request as in flight until `routing.load_stale_after_s` (10 minutes).
The tiers here are a loopback OpenAI-compatible server that holds each stream's first token back.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from echolm_lab.proxy_process import ProxyProcess, free_port, running_proxy

pytestmark = pytest.mark.integration

FIRST_TOKEN_DELAY_S = 4.0


class SlowFirstTokenUpstream:
    """Answers chat completions; a stream's first token comes only after FIRST_TOKEN_DELAY_S."""

    def __init__(self) -> None:
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                if not body.get("stream"):
                    self._send(200, "application/json", _completion(body["model"]))
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                time.sleep(FIRST_TOKEN_DELAY_S)
                try:
                    for chunk in (_chunk(body["model"], "Paris", None), _chunk(body["model"], "", "stop")):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:
                    pass  # the proxy closed its upstream connection after the client left

            def _send(self, status: int, content_type: str, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def _chunk(model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}],
    }


@pytest.fixture
def proxy_over_slow_tiers(tmp_path: Path) -> Iterator[ProxyProcess]:
    upstream = SlowFirstTokenUpstream()
    api_base = f"http://127.0.0.1:{upstream.port}/v1"
    config = {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": api_base, "api_key": "x"}}
            for name in ("cheap", "strong")
        ],
        # The wheel's name for the door: no integrations/ folder next to this config.
        "litellm_settings": {"callbacks": "echolm_middleware.doors.litellm_proxy.proxy_handler"},
        "echolm": {
            "tiers": [{"name": "cheap", "cost_per_1k_tokens": 0.0001}, {"name": "strong", "cost_per_1k_tokens": 0.002}],
            "store": {"path": str(tmp_path / "chroma")},
            "state": {"path": str(tmp_path / "state.db")},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        with running_proxy(path, log_path=tmp_path / "proxy.log") as proxy:
            yield proxy
    finally:
        upstream.close()


def _in_flight(proxy: ProxyProcess) -> float:
    """Routed requests in flight on all tiers, as the proxy's metrics show them."""
    request = urllib.request.Request(
        f"{proxy.url}/echolm/metrics", headers={"Authorization": f"Bearer {proxy.master_key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("echolm_tier_in_flight{")]
    assert lines, text
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def _wait_routed(proxy: ProxyProcess) -> None:
    """Until the engine is built (the embedder loads in the background; until then requests fail open)."""
    headers = {"Authorization": f"Bearer {proxy.master_key}"}
    body = {"model": "strong", "messages": [{"role": "user", "content": "Warm up?"}], "max_tokens": 4}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        if response.headers.get("x-echolm-action") == "route":
            return
        time.sleep(1)
    raise AssertionError(f"the engine did not come up:\n{proxy.log_tail()}")


def test_a_stream_hung_up_before_its_first_token_releases_its_tier(proxy_over_slow_tiers: ProxyProcess) -> None:
    proxy = proxy_over_slow_tiers
    _wait_routed(proxy)
    assert _in_flight(proxy) == 0

    def hang_up_early() -> None:
        body = {"model": "strong", "messages": [{"role": "user", "content": "Capital of France?"}], "stream": True}
        headers = {"Authorization": f"Bearer {proxy.master_key}"}
        # The client gives up after 1.5 s: long before the tier's first token, which takes 4 s.
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=1.5) as r,
        ):
            for _ in r.iter_bytes():
                pass

    client = threading.Thread(target=hang_up_early)
    client.start()
    during = 0.0
    while client.is_alive():  # the request is on its tier while the client waits
        during = max(during, _in_flight(proxy))
        time.sleep(0.1)
    client.join()
    hung_up = time.monotonic()
    while _in_flight(proxy) != 0 and time.monotonic() - hung_up < 30:
        time.sleep(0.25)
    released_after_s = time.monotonic() - hung_up

    assert during == 1, proxy.log_tail()
    assert _in_flight(proxy) == 0, proxy.log_tail()
    # Once the tier's first token reaches the proxy (4 s after the request) the stream is closed and the
    # load released, not after routing.load_stale_after_s (600 s).
    assert released_after_s < FIRST_TOKEN_DELAY_S + 5
    # A caller hanging up says nothing about the tier: it is not left out of routing.
    assert "left out of routing" not in proxy.log_tail(2000)
