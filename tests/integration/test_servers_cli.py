"""`echolm servers` starts a Redis and a Chroma server that answer, reports them, and stops them."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from echolm_lab.local_services import free_port

pytestmark = pytest.mark.integration


def _echolm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echolm_middleware.cli.main", "servers", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_start_status_stop(tmp_path: Path) -> None:
    import redis

    redis_port, chroma_port = free_port(), free_port()
    folder = str(tmp_path / "servers")

    started = _echolm("start", "--dir", folder, "--redis-port", str(redis_port), "--chroma-port", str(chroma_port))
    try:
        assert started.returncode == 0, started.stderr
        assert f"ECHOLM_COORDINATION__REDIS_URL=redis://127.0.0.1:{redis_port}/0" in started.stdout
        assert redis.Redis(port=redis_port).ping()
        with urllib.request.urlopen(f"http://127.0.0.1:{chroma_port}/api/v2/heartbeat", timeout=5) as response:
            assert response.status == 200
        status = _echolm("status", "--dir", folder)
        assert status.returncode == 0
        assert status.stdout.count("running") == 2
        again = _echolm("start", "--dir", folder)
        assert again.returncode == 1 and "already running" in again.stdout
    finally:
        stopped = _echolm("stop", "--dir", folder)
    assert stopped.returncode == 0
    assert "stopped redis" in stopped.stdout and "stopped chroma" in stopped.stdout
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
