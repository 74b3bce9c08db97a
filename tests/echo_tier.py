"""A fake OpenAI-compatible tier for safety tests: it answers at once, keeps every request body it was
sent, and misbehaves on request, so a test sees exactly what reached a tier and what was admitted.

The answer is `tok0 tok1 ... tok{N-1}` after a prefix naming the tier, N = 20. Markers in the last
user message change how it ends:
  [no-finish]  the stream ends cleanly without a finish reason (non-streamed: finish_reason null)
  [slow]       a streamed chunk every 0.3 s (a client has time to hang up part way)
  [length]     finish_reason "length"
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = 20


class EchoTier:
    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        tier = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": tier.name, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                with tier._lock:
                    tier.bodies.append(body)
                last = str((body.get("messages") or [{}])[-1].get("content"))
                words = [f"{tier.name}:"] + [f"tok{i}" for i in range(WORDS)]
                finish = None if "[no-finish]" in last else ("length" if "[length]" in last else "stop")
                if body.get("stream"):
                    self._stream(words, finish, delay=0.3 if "[slow]" in last else 0.0)
                else:
                    self._json(_completion(tier.name, " ".join(words), finish))

            def _json(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, words: list[str], finish: str | None, delay: float) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                try:
                    for index, word in enumerate(words):
                        text = word if index == 0 else " " + word
                        self._event(
                            _chunk(
                                tier.name,
                                {"role": "assistant", "content": text} if index == 0 else {"content": text},
                                None,
                            )
                        )
                        time.sleep(delay)
                    if finish is not None:
                        self._event(_chunk(tier.name, {}, finish))
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the proxy hung up, as its client did

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompts(self) -> list[str]:
        """Every message text each request carried, one string per request."""
        with self._lock:
            return ["\n".join(str(m.get("content")) for m in body.get("messages") or []) for body in self.bodies]

    def clear(self) -> None:
        with self._lock:
            self.bodies.clear()

    def __enter__(self) -> EchoTier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _completion(model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": WORDS + 1, "total_tokens": WORDS + 11},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-echo",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
