"""`echolm servers`: start, stop and inspect the Redis and Chroma servers that several workers share."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from echolm_lab.local_services import process_alive

DEFAULT_DIR = Path(".echolm/servers")
PIDS = "servers.json"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    servers = subparsers.add_parser(
        "servers",
        help="run the Redis and Chroma servers that several proxy workers share (loopback)",
        description=(
            "Start a Redis server (per-tier load and the upkeep's lock: coordination.redis_url) and a Chroma "
            "server (the example store: store.server_url) on 127.0.0.1, each with its data and log under "
            "--dir. Prints the two settings to give the proxy. See README 'Running several workers'."
        ),
    )
    commands = servers.add_subparsers(dest="servers_command", metavar="SUBCOMMAND", required=True)
    start = commands.add_parser("start", help="start both servers in the background", description="Start both.")
    start.add_argument("--redis-port", type=int, default=6390, help="Redis port (default: %(default)s)")
    start.add_argument("--chroma-port", type=int, default=8000, help="Chroma port (default: %(default)s)")
    start.set_defaults(func=_start)
    stop = commands.add_parser("stop", help="stop the servers started here", description="SIGTERM both.")
    stop.set_defaults(func=_stop)
    status = commands.add_parser("status", help="show the servers and whether they run", description="Status.")
    status.set_defaults(func=_status)
    for command in (start, stop, status):
        command.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="data, logs and pid file (default: %(default)s)"
        )


def _recorded(folder: Path) -> dict[str, Any]:
    try:
        recorded: dict[str, Any] = json.loads((folder / PIDS).read_text())
        return recorded
    except (OSError, ValueError):
        return {}


def _start(args: argparse.Namespace) -> int:
    from echolm_lab.local_services import ServiceError, start_chroma, start_redis

    folder: Path = args.dir
    running = {name: entry for name, entry in _recorded(folder).items() if process_alive(int(entry["pid"]))}
    if running:
        print(f"echolm: already running: {', '.join(running)}; `echolm servers stop --dir {folder}` first")
        return 1
    try:
        redis = start_redis(args.redis_port, folder / "redis")
        try:
            chroma = start_chroma(args.chroma_port, folder / "chroma")
        except ServiceError:
            redis.stop()
            raise
    except ServiceError as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 1
    entries = {
        service.name: {
            "pid": service.process.pid,
            "port": service.port,
            "url": service.url,
            "log": str(service.log_path),
        }
        for service in (redis, chroma)
    }
    (folder / PIDS).write_text(json.dumps(entries, indent=2))
    print(f"redis:  {redis.url} (pid {redis.process.pid}, log {redis.log_path})")
    print(f"chroma: {chroma.url} (pid {chroma.process.pid}, log {chroma.log_path})")
    print("Give the proxy (config or environment):")
    print(f"  ECHOLM_COORDINATION__REDIS_URL={redis.url}/0 ECHOLM_STORE__SERVER_URL={chroma.url}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    recorded = _recorded(args.dir)
    for name, entry in recorded.items():
        pid = int(entry["pid"])
        if not process_alive(pid):
            print(f"{name}: not running")
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid}, port {entry['port']})")
    (args.dir / PIDS).unlink(missing_ok=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    recorded = _recorded(args.dir)
    if not recorded:
        print(f"no servers recorded under {args.dir}")
        return 1
    for name, entry in recorded.items():
        state = "running" if process_alive(int(entry["pid"])) else "not running"
        print(f"{name}: {entry['url']} (pid {entry['pid']}) {state}")
    return 0
