"""The shared servers several proxy workers need, started on loopback: a Redis and a Chroma server.

`echolm servers start` and the test fixtures start them the same way; `deploy/compose.yaml` is the
same pair for users who run containers. Each server is a child process with its own data directory and
log; `stop` ends it gracefully, `kill` as a crash would.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from echolm_lab.proxy_process import free_port
from echolm_middleware.errors import EchoLMError

__all__ = ["Service", "ServiceError", "free_port", "process_alive", "running", "start_chroma", "start_redis"]

_LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(EchoLMError):
    """A shared server could not be found or did not come up."""


@dataclass
class Service:
    """One running server process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        scheme = "redis" if self.name == "redis" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not go."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        if self.alive():
            self.process.kill()
            self.process.wait(10)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts as alive)."""
    return bool(psutil.pid_exists(pid))


def _wait(ready: Callable[[], bool], service: Service, timeout_s: float) -> Service:
    # A fixed short poll, kept by hand: the server is a child on this host that is either starting or dead
    # (checked each round), so backoff (tenacity) would only add up to its cap to every start.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise ServiceError(f"{service.name} exited at start; see {service.log_path}")
        if ready():
            return service
        time.sleep(0.1)
    service.kill()
    raise ServiceError(f"{service.name} did not answer on port {service.port} within {timeout_s:.0f} s")


def _spawn(name: str, command: list[str], port: int, log_path: Path) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # Its own session: it outlives `echolm servers start` and a Ctrl-C meant for the terminal.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Service(name, port, process, log_path)


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise ServiceError(
            "no redis-server or valkey-server on PATH; install Debian's redis-server package (make servers)"
        )
    return found


def _redis_ready(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(port: int, data_dir: Path, *, timeout_s: float = 20.0) -> Service:
    """redis-server on 127.0.0.1:`port`, persisting under `data_dir` (append-only file, fsync each second)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    service = _spawn("redis", command, port, data_dir / "redis.log")
    return _wait(lambda: _redis_ready(port), service, timeout_s)


def _chroma_ready(port: int) -> bool:
    try:
        with _LOCAL_HTTP.open(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def chroma_binary() -> str:
    beside_python = Path(sys.executable).with_name("chroma")
    found = str(beside_python) if beside_python.exists() else shutil.which("chroma")
    if found is None:
        raise ServiceError("no `chroma` command; install it with: pip install 'echolm-middleware[chroma]'")
    return found


def start_chroma(port: int, path: Path, *, timeout_s: float = 60.0) -> Service:
    """`chroma run` on 127.0.0.1:`port`, its data under `path`."""
    path.mkdir(parents=True, exist_ok=True)
    command = [chroma_binary(), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)]
    service = _spawn("chroma", command, port, path.parent / f"{path.name}-chroma.log")
    return _wait(lambda: _chroma_ready(port), service, timeout_s)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    """Stop the service when the block ends, however it ends."""
    try:
        yield service
    finally:
        service.stop()
