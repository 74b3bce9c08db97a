"""Start and stop a LiteLLM proxy process with our callback (tests, demo, bench, soak), after checking its config."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from echolm_middleware.errors import EchoLMError
from echolm_middleware.proxy_launch import proxy_environment, validate_proxy_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    url: str
    master_key: str
    log_path: Path
    stopped: bool = False  # stop() was called: its end was asked for

    def stop(self, timeout: float = 20.0) -> None:
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def ended_unasked(self) -> str | None:
        """How the process ended if it ended before anyone stopped it ("killed by SIGSEGV", "exited with code 1");
        None while it runs or once stopped. A bench pass that loses its proxy says so, not only its errors."""
        code = self.process.poll()
        if code is None or self.stopped:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# `litellm --config ...` with the guard our LiteLLM doors install at import (README "Running several
# workers"): a baseline proxy that loads none of our code (strong-only in the bench) died of that CPython
# fault under load (SIGSEGV after 417 of 1,000 NQ-open requests, 2026-12-05), and a baseline that crashes
# where ours does not measures the fault, not the serving. It says in its log whether the guard is on.
GUARDED_PROXY = (
    "import sys\n"
    "from echolm_middleware.doors.litellm_stream_finalizer import guard_stream_finalizer\n"
    "print('lab proxy: LiteLLM stream finalizer guarded:', guard_stream_finalizer(), flush=True)\n"
    "from litellm.proxy.proxy_cli import run_server\n"
    "sys.argv[0] = 'litellm'\n"
    "run_server()\n"
)


def start_proxy(
    config: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path,
    workers: int = 1,
    ready_timeout: float = 180.0,
    master_key: bool = True,
) -> ProxyProcess:
    """Launch `litellm --config` and wait until it answers its liveliness probe (`master_key=False`: a
    proxy with none, which LiteLLM runs when neither its config nor LITELLM_MASTER_KEY names one)."""
    validate_proxy_config(config)
    port = port or free_port()
    environment = proxy_environment(env, workers=workers)
    # The lab's proxies serve one user, its master key: they share one cache because this says so.
    # A test of tenancy itself sets ECHOLM_TENANCY__SHARED in `env`, and wins.
    environment.setdefault("ECHOLM_TENANCY__SHARED", "true")
    # A proxy that dies in native code (a bench pass's proxy once stopped mid-pass with nothing in its log)
    # then leaves every thread's Python stack in its log.
    environment.setdefault("PYTHONFAULTHANDLER", "1")
    if not master_key:
        environment.pop("LITELLM_MASTER_KEY")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-c", GUARDED_PROXY,
        "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", str(workers),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=str(config.resolve().parent)
        )
    proxy = ProxyProcess(process, f"http://127.0.0.1:{port}", environment.get("LITELLM_MASTER_KEY", ""), log_path)
    # A fixed poll by hand, as the tier servers' (local_services._wait): a child process, starting or dead.
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EchoLMError(f"the proxy exited with {process.returncode}:\n{proxy.log_tail()}")
        try:
            with urllib.request.urlopen(f"{proxy.url}/health/liveliness", timeout=2):
                return proxy
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    proxy.stop()
    raise EchoLMError(f"the proxy did not become ready in {ready_timeout:.0f}s:\n{proxy.log_tail()}")


@contextmanager
def running_proxy(config: Path, **kwargs: object) -> Iterator[ProxyProcess]:
    """A proxy for the duration of a `with` block; always stopped afterwards."""
    proxy = start_proxy(config, **kwargs)  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()
