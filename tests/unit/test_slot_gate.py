"""The slot gate of the elastic deployment: at most `slots` generations at once across every server behind
it, held until the reply's last byte, one at a time per server, and taken only once the request's own
server is free; requests that generate nothing pass straight through."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from echolm_lab.bench.slot_gate import behind_gate, slot_gate


class _SlowServer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.3)
        reply = json.dumps({"echo": body, "port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[int]]:
    running = [ThreadingHTTPServer(("127.0.0.1", 0), _SlowServer) for _ in range(2)]
    for server in running:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [server.server_address[1] for server in running]
    for server in running:
        server.shutdown()
        server.server_close()


def _post(url: str, payload: dict[str, int]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def test_at_most_two_generations_run_at_once_across_every_server_behind_the_gate(servers: list[int]) -> None:
    with slot_gate(2) as gate:
        urls = [f"{gate.url_for(servers[n % 2])}/v1/chat/completions" for n in range(6)]
        replies: list[dict[str, object]] = []
        started = time.perf_counter()
        threads = [
            threading.Thread(target=lambda u=u, n=n: replies.append(_post(u, {"n": n}))) for n, u in enumerate(urls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        most = gate.most_in_use

    assert most == 2
    assert elapsed >= 0.9  # six 0.3 s generations, two at a time (unGated: 0.3 s)
    assert sorted(r["echo"]["n"] for r in replies) == list(range(6))  # type: ignore[index]
    assert {r["port"] for r in replies} == set(servers)


def test_a_request_queued_behind_its_busy_server_leaves_the_slot_to_an_idle_one(servers: list[int]) -> None:
    # Three requests for the first server, then one for the second: the gate lets a server answer one at a
    # time (as a one-slot llama.cpp server does), so the first's second and third wait without a slot, and
    # the second server's request takes the other slot at once (holding slots while queued, it would wait
    # for two of the first's 0.3 s answers).
    with slot_gate(2) as gate:
        done_at: dict[int, float] = {}
        started = time.perf_counter()

        def ask(n: int, port: int) -> None:
            _post(f"{gate.url_for(port)}/v1/chat/completions", {"n": n})
            done_at[n] = time.perf_counter() - started

        threads = [threading.Thread(target=ask, args=(n, servers[0])) for n in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        threads.append(threading.Thread(target=ask, args=(3, servers[1])))
        threads[-1].start()
        for thread in threads:
            thread.join()

    assert done_at[3] < 0.6, done_at
    assert max(done_at.values()) >= 0.9  # the first server's three answers, one after another


def test_requests_that_generate_nothing_pass_without_a_slot(servers: list[int]) -> None:
    with slot_gate(1) as gate:
        holder = threading.Thread(target=_post, args=(f"{gate.url_for(servers[0])}/v1/chat/completions", {"n": 0}))
        holder.start()
        time.sleep(0.05)
        started = time.perf_counter()
        with urllib.request.urlopen(f"{gate.url_for(servers[1])}/v1/models", timeout=10) as reply:
            assert reply.read() == b"ok"
        waited = time.perf_counter() - started
        holder.join()

    assert waited < 0.2  # not behind the generation holding the only slot


def test_every_local_server_of_a_model_list_is_reached_through_the_gate() -> None:
    with slot_gate(2) as gate:
        model_list = [
            {"model_name": "cheap", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:8101/v1"}},
            {
                "model_name": "remote",
                "litellm_params": {"model": "openai/gpt-4o", "api_base": "https://api.example/v1"},
            },
        ]

        gated = behind_gate(model_list, gate)

    assert gated[0]["litellm_params"]["api_base"] == f"http://127.0.0.1:{gate.port}/8101/v1"
    assert gated[1]["litellm_params"]["api_base"] == "https://api.example/v1"
    assert model_list[0]["litellm_params"]["api_base"] == "http://127.0.0.1:8101/v1"  # the caller's list untouched
