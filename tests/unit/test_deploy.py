"""deploy/compose.yaml: its proxy settings parse as the proxy reads them, and the servers match ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from echolm_middleware.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_compose_proxy_environment_gives_a_valid_several_worker_config(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    environment = compose["services"]["proxy"]["environment"]
    for name, value in environment.items():
        if name.startswith("ECHOLM_"):
            monkeypatch.setenv(name, str(value))

    settings, _ = load_settings(ROOT / "config.yaml")

    assert settings.store.server_url == "http://chroma:8000"
    assert settings.coordination.redis_url == "redis://redis:6379/0"
    assert "--workers" in compose["services"]["proxy"]["command"]
    assert set(compose["services"]) == {"postgres", "redis", "chroma", "proxy"}


def test_the_compose_proxy_keeps_virtual_keys_in_its_postgres() -> None:
    """Per-team keys are the documented path: LiteLLM's key database is the compose file's Postgres."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    proxy, postgres = compose["services"]["proxy"], compose["services"]["postgres"]
    database_url = proxy["environment"]["DATABASE_URL"]
    assert database_url.startswith("postgresql://")
    assert f"@postgres:5432/{postgres['environment']['POSTGRES_DB']}" in database_url
    assert proxy["depends_on"]["postgres"] == {"condition": "service_healthy"}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "prisma generate" in dockerfile  # the proxy image can reach the database without a network
