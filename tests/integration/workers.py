"""Helpers for tests that drive several proxy workers over HTTP: asking, and reading their metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from echolm_lab.proxy_process import ProxyProcess
from tests.integration.conftest import STRONG


def client_for(proxy: ProxyProcess) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.master_key, max_retries=0, timeout=300)


def ask(proxy: ProxyProcess, question: str, max_tokens: int = 8) -> tuple[str, dict[str, str]]:
    """One non-streamed completion naming the strong tier: (answer, response headers)."""
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model=STRONG, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
    )
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def ask_all(proxy: ProxyProcess, questions: list[str]) -> list[tuple[str, dict[str, str]]]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda q: ask(proxy, q), questions))


def metrics_text(proxy: ProxyProcess, key: str | None = None) -> str:
    request = urllib.request.Request(f"{proxy.url}/echolm/metrics")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def wait_routed(proxy: ProxyProcess, timeout_s: float = 240.0) -> None:
    """Until 6 answers in a row were routed: both workers have built their engines."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 6:
        assert time.monotonic() < deadline, f"workers not ready:\n{proxy.log_tail(60)}"
        _, headers = ask(proxy, "ping")
        streak = streak + 1 if headers.get("x-echolm-action") == "route" else 0
