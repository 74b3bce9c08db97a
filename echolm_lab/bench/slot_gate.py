"""A gate in front of the local tier servers that lets at most `slots` generations run at once, whichever
servers they are on: elastic co-location on a fixed number of cores.

With one thread per llama.cpp server, four servers (two cheap, two strong) on two cores would crawl if all
generated together. Behind this gate they never do: a chat completion waits for one of two slots before
it reaches its server and holds it until its last byte is sent back, so any mix of tiers shares the two
cores, as a deployment that moves cores between tiers on demand would. Each server behind the gate answers
one request at a time (one llama.cpp slot), so a request first waits for its own server to be free and
only then for a slot: a request queued behind its busy server never holds a core that another, idle
server could use (with nine in ten requests on the two strong servers, an elastic pass reached 2.11 req/s
against its ceiling of 2.45 while queued requests held slots). Requests that generate nothing
(`GET /v1/models`, health checks) pass straight through.

Each upstream is reached under its port: `http://127.0.0.1:<gate>/<port>/v1/...` goes to
`http://127.0.0.1:<port>/v1/...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from echolm_lab.proxy_process import free_port

# Hop-by-hop headers and those aiohttp sets itself: not copied between the two connections.
_NOT_FORWARDED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class SlotGate:
    """An HTTP gate on loopback; `in_use` and `most_in_use` say how many generations it let through at once."""

    def __init__(self, slots: int, port: int | None = None) -> None:
        self.slots = slots
        self.port = port or free_port()
        self.in_use = 0
        self.most_in_use = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slot-gate", daemon=True)
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    def url_for(self, upstream_port: int) -> str:
        return f"http://127.0.0.1:{self.port}/{upstream_port}"

    def start(self) -> SlotGate:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the slot gate did not start")
        return self

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        slots = asyncio.Semaphore(self.slots)
        server_free: dict[str, asyncio.Lock] = {}
        self._stopped = asyncio.Event()
        async with ClientSession(timeout=ClientTimeout(total=None)) as upstream:

            async def forward(request: web.Request) -> web.StreamResponse:
                port, tail = request.match_info["port"], request.match_info["tail"]
                generates = request.method == "POST"
                async with contextlib.AsyncExitStack() as held:
                    if generates:
                        await held.enter_async_context(server_free.setdefault(port, asyncio.Lock()))
                        await held.enter_async_context(slots)
                        self.in_use += 1
                        self.most_in_use = max(self.most_in_use, self.in_use)
                        held.callback(self._release)
                    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
                    async with upstream.request(
                        request.method, f"http://127.0.0.1:{port}/{tail}", params=request.query,
                        data=await request.read(), headers=headers,
                    ) as reply:  # fmt: skip
                        response = web.StreamResponse(
                            status=reply.status,
                            headers={k: v for k, v in reply.headers.items() if k.lower() not in _NOT_FORWARDED},
                        )
                        await response.prepare(request)
                        async for chunk in reply.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                        return response

            app = web.Application()
            app.router.add_route("*", r"/{port:\d+}/{tail:.*}", forward)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stopped.wait()
            await self._runner.cleanup()

    def _release(self) -> None:
        self.in_use -= 1


@contextlib.contextmanager
def slot_gate(slots: int) -> Iterator[SlotGate]:
    gate = SlotGate(slots).start()
    try:
        yield gate
    finally:
        gate.stop()


def behind_gate(model_list: Sequence[Mapping[str, Any]], gate: SlotGate) -> list[dict[str, Any]]:
    """The model list with every local server (`http://127.0.0.1:<port>/...`) reached through the gate."""
    gated: list[dict[str, Any]] = []
    for original in model_list:
        entry = copy.deepcopy(dict(original))
        params = entry.get("litellm_params") or {}
        base = str(params.get("api_base", ""))
        match = re.fullmatch(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/.*)?", base)
        if match:
            params["api_base"] = gate.url_for(int(match.group(1))) + (match.group(2) or "")
        gated.append(entry)
    return gated
