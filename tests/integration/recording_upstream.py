"""A loopback HTTP forwarder that records every chat request body before passing it to a real tier.

It lets a test see exactly which prompt reached the cheap tier, while the real llama.cpp server answers.
Streaming responses are relayed chunk by chunk (close-delimited, HTTP/1.0).
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class RecordingUpstream:
    def __init__(self, listen_port: int, upstream_port: int) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _relay(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if method == "POST" and self.path.endswith("/chat/completions"):
                    try:
                        parsed = json.loads(body)
                    except ValueError:
                        parsed = {"unparsable": body.decode("utf-8", "replace")}
                    with recorder._lock:
                        recorder.bodies.append(parsed)
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=600)
                # Closed however the relay ends (a caller that hangs up mid-stream raises in the write):
                # a connection left to the garbage collector warns in whichever test is running then.
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
                    upstream.request(method, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    self.end_headers()
                    while chunk := response.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                finally:
                    upstream.close()

            def do_GET(self) -> None:
                self._relay("GET")

            def do_POST(self) -> None:
                self._relay("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", listen_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def prompts(self) -> list[str]:
        """Every message text the upstream received, one string per request."""
        with self._lock:
            bodies = list(self.bodies)
        return [json.dumps(body.get("messages", body), ensure_ascii=False) for body in bodies]

    def clear(self) -> None:
        with self._lock:
            self.bodies.clear()
