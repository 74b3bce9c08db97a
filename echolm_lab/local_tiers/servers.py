"""One `llama_cpp.server` process per tier, one thread each, tracked in a run directory."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from echolm_lab.local_services import process_alive
from echolm_lab.local_tiers import LocalTierError, ServerStartFailed
from echolm_lab.local_tiers.assemble import ensure_model
from echolm_lab.local_tiers.manifest import get_artifact
from echolm_middleware.errors import MissingExtra

# llama-cpp-python 0.3.36 reads its settings from the environment too (pydantic-settings, any case), and its
# `__main__.py` lets HOST, PORT and CONFIG_FILE override the command line. These are the names that would
# silently change what we start or lock out our probe (API_KEY), so the child never sees them.
_SERVER_ENV_OVERRIDES = frozenset(
    {"host", "port", "config_file", "api_key", "model", "model_alias", "chat_format", "n_ctx", "n_threads",
     "n_threads_batch", "n_gpu_layers", "interrupt_requests", "root_path", "ssl_keyfile", "ssl_certfile",
     "verbose", "cache", "cache_type", "seed", "n_batch", "n_ubatch", "embedding", "draft_model"}
)  # fmt: skip
_STOP_GRACE_S = 10.0
# Plain urllib, no proxies: an http_proxy in the environment must not swallow requests to 127.0.0.1.
_LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class TierSpec:
    """What to serve for one tier: a GGUF file under an alias, on a local port."""

    alias: str
    model_path: Path
    port: int
    n_ctx: int = 2048
    chat_format: str | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class RunningTier:
    """A tier whose server answered `GET /v1/models` with its alias."""

    alias: str
    host: str
    port: int
    pid: int | None  # None: a healthy server for this alias that no pid file of ours describes
    model_path: str
    log_path: str

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL (what LiteLLM calls `api_base`)."""
        return f"http://{self.host}:{self.port}/v1"


def tier_specs(
    aliases: Sequence[str], model_dir: Path, *, port_base: int, n_ctx: int = 2048, progress: bool = True
) -> list[TierSpec]:
    """Specs for the manifest's `aliases` on ports `port_base + i`, fetching models that are missing."""
    artifacts = [get_artifact(alias) for alias in aliases]  # validate every name before any download
    return [
        TierSpec(
            alias=artifact.alias,
            model_path=ensure_model(artifact, model_dir, progress=progress),
            port=port_base + index,
            n_ctx=n_ctx,
            chat_format=artifact.chat_format,
        )
        for index, artifact in enumerate(artifacts)
    ]


def start_tiers(specs: Sequence[TierSpec], run_dir: Path, *, timeout_s: float = 120.0) -> list[RunningTier]:
    """Start (or reuse) a server per spec and wait until each answers; they keep running after we return."""
    return [_start_one(spec, run_dir, timeout_s)[0] for spec in specs]


@contextlib.contextmanager
def running_tiers(specs: Sequence[TierSpec], run_dir: Path, *, timeout_s: float = 120.0) -> Iterator[list[RunningTier]]:
    """Serve `specs` for the duration of the block; stop, on any exit, the servers this block started."""
    started: list[RunningTier] = []
    try:
        tiers = []
        for spec in specs:
            tier, is_new = _start_one(spec, run_dir, timeout_s)
            tiers.append(tier)
            if is_new:
                started.append(tier)
        yield tiers
    finally:
        stop_tiers(started, run_dir)


def stop_tiers(tiers: Sequence[RunningTier], run_dir: Path) -> list[RunningTier]:
    """SIGTERM the tiers' servers together, SIGKILL those left after a grace period, forget all of them.

    Returns the tiers whose server was running and stopped; a server we have no pid for is left alone.
    """
    running = [tier for tier in tiers if tier.pid is not None and _is_our_server(tier.pid, tier.port)]
    _terminate([tier.pid for tier in running if tier.pid is not None])
    for tier in tiers:
        _pid_file(run_dir, tier.alias).unlink(missing_ok=True)
        _forget(run_dir, tier.alias)
    return running


def stop_all(run_dir: Path) -> tuple[list[RunningTier], list[RunningTier]]:
    """Stop every tier recorded in `run_dir`; return (recorded, actually stopped)."""
    tiers = recorded_tiers(run_dir)
    return tiers, stop_tiers(tiers, run_dir)


def recorded_tiers(run_dir: Path) -> list[RunningTier]:
    """The tiers that `tiers.json` in `run_dir` describes (alive or not)."""
    return [_tier_from_record(entry) for entry in _read_registry(run_dir).values()]


def tier_state(tier: RunningTier) -> str:
    """`healthy`, `not answering` (process alive, no answer) or `dead`."""
    if tier.alias in _served_models(tier.host, tier.port):
        return "healthy"
    if tier.pid is not None and _is_our_server(tier.pid, tier.port):
        return "not answering"
    return "dead"


def _start_one(spec: TierSpec, run_dir: Path, timeout_s: float) -> tuple[RunningTier, bool]:
    """Start one server unless a healthy one already serves this alias on this port; True if we started it."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingExtra("local tiers need llama-cpp-python: pip install 'echolm-middleware[local]'")
    tier_dir = run_dir / "tiers"
    tier_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(run_dir, spec.alias)
    log_path = tier_dir / f"{spec.alias}.log"
    previous = _read_pid(pid_file)
    served = _served_models(spec.host, spec.port)
    if spec.alias in served:
        reused = previous if previous is not None and _is_our_server(previous, spec.port) else None
        tier = RunningTier(spec.alias, spec.host, spec.port, reused, str(spec.model_path), str(log_path))
        _remember(run_dir, tier)
        return tier, False
    if previous is not None and process_alive(previous) and _is_our_server(previous, None):
        raise LocalTierError(
            f"{spec.alias} already runs as pid {previous} on another port; "
            f"stop it first (echolm tiers stop --run-dir {run_dir})"
        )
    if served:
        raise LocalTierError(f"port {spec.port} already serves {', '.join(served)}, not {spec.alias}")
    _require_free_port(spec.host, spec.port)
    pid = _launch(spec, log_path)
    pid_file.write_text(f"{pid}\n")
    tier = RunningTier(spec.alias, spec.host, spec.port, pid, str(spec.model_path), str(log_path))
    try:
        _wait_until_healthy(tier, pid, timeout_s)
    except BaseException:
        # Ctrl-C or a failed start: never leave a half-started server behind.
        _terminate([pid])
        pid_file.unlink(missing_ok=True)
        raise
    _remember(run_dir, tier)
    return tier, True


def _launch(spec: TierSpec, log_path: Path) -> int:
    """Spawn the server detached from our terminal, its output going to `log_path`; return its pid."""
    argv = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(spec.model_path),
        "--model_alias", spec.alias,
        "--host", spec.host,
        "--port", str(spec.port),
        "--n_ctx", str(spec.n_ctx),
        # One thread per server: on 2 cores, oversubscription drops decoding from 55 to under 1 token/s.
        "--n_threads", "1",
        "--n_threads_batch", "1",
        # The default (True) aborts a running completion whenever another request arrives.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    if spec.chat_format is not None:
        argv += ["--chat_format", spec.chat_format]
    env = {key: value for key, value in os.environ.items() if key.lower() not in _SERVER_ENV_OVERRIDES}
    env["OMP_NUM_THREADS"] = "1"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # posix_spawn rather than Popen: the server outlives this process (`tiers start`), and a dropped
        # Popen of a live child raises ResourceWarning, which the test suite turns into an error. A new
        # session keeps Ctrl-C in the terminal from reaching the server before we stop it in order.
        return os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)


def _wait_until_healthy(tier: RunningTier, pid: int, timeout_s: float) -> None:
    # A fixed short poll, kept by hand: the server is a child on this host that is either starting or dead
    # (checked each round), so backoff (tenacity) would only add up to its cap to every start.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _reap_if_exited(pid):
            raise ServerStartFailed(f"{tier.alias} server exited while starting; log tail:\n{_tail(tier)}")
        if tier.alias in _served_models(tier.host, tier.port):
            return
        time.sleep(0.2)
    raise ServerStartFailed(f"{tier.alias} server gave no answer in {timeout_s:.0f} s; log tail:\n{_tail(tier)}")


def _served_models(host: str, port: int) -> list[str]:
    """The model ids `GET /v1/models` lists on host:port; empty when nothing answers there."""
    try:
        with _LOCAL_HTTP.open(f"http://{host}:{port}/v1/models", timeout=2.0) as response:
            listing = json.load(response)
        return [str(model["id"]) for model in listing["data"]]
    except (OSError, ValueError, LookupError, TypeError, urllib.error.URLError):
        return []


def _require_free_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn does: connections of a just-stopped server in TIME_WAIT must not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LocalTierError(f"port {port} on {host} is in use by something else ({exc})") from exc


def _terminate(pids: Sequence[int]) -> None:
    """SIGTERM all, wait, then SIGKILL the ones still running."""
    remaining = list(pids)
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while remaining and time.monotonic() < deadline:
            remaining = [pid for pid in remaining if not _reap_if_exited(pid)]
            time.sleep(0.1)
        if not remaining:
            return


def _reap_if_exited(pid: int) -> bool:
    """True once `pid` has exited; reaps it when it is our child so it does not linger as a zombie."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not process_alive(pid)  # started by another process (`tiers start`, then `tiers stop`)
    return done == pid


def _is_our_server(pid: int, port: int | None) -> bool:
    """Guard against a recycled pid: the process must be a llama_cpp.server (on `port`, when given)."""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return process_alive(pid)  # not ours to read: trust the pid file
    if "llama_cpp.server" not in argv:
        return False
    return port is None or str(port) in argv


def _tail(tier: RunningTier, lines: int = 25) -> str:
    try:
        text = Path(tier.log_path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pid_file(run_dir: Path, alias: str) -> Path:
    return run_dir / "tiers" / f"{alias}.pid"


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _registry_path(run_dir: Path) -> Path:
    return run_dir / "tiers.json"


def _read_registry(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        registry = json.loads(_registry_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return registry if isinstance(registry, dict) else {}


def _write_registry(run_dir: Path, registry: dict[str, dict[str, Any]]) -> None:
    path = _registry_path(run_dir)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _remember(run_dir: Path, tier: RunningTier) -> None:
    registry = _read_registry(run_dir)
    registry[tier.alias] = {**asdict(tier), "api_base": tier.api_base}
    _write_registry(run_dir, registry)


def _tier_from_record(entry: dict[str, Any]) -> RunningTier:
    pid = entry.get("pid")
    return RunningTier(
        alias=str(entry["alias"]),
        host=str(entry["host"]),
        port=int(entry["port"]),
        pid=None if pid is None else int(pid),
        model_path=str(entry["model_path"]),
        log_path=str(entry["log_path"]),
    )


def _forget(run_dir: Path, alias: str) -> None:
    registry = _read_registry(run_dir)
    if registry.pop(alias, None) is not None:
        _write_registry(run_dir, registry)
