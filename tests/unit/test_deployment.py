"""The deployment files say what the code does: every CALLGATE_ variable is a real setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "CALLGATE_"


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    found: dict[str, str] = {}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            if key.startswith(PREFIX):
                found[key] = str(value)
        assert name
    return found


def test_every_callgate_variable_in_compose_is_a_setting() -> None:
    known = {PREFIX + field.upper() for field in Settings.model_fields}
    used = _compose_env()
    assert used, "compose sets no CALLGATE_ variable"
    assert sorted(set(used) - known) == []


def test_compose_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _compose_env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.media_mode.value == "livekit"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.allowed_origins == ["http://localhost:8080"]  # the load balancer
    assert len(settings.turn_urls) == 2


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f for f in Settings.model_fields if f"`{PREFIX}{f.upper()}`" not in readme]
    assert missing == []


def test_compose_runs_a_worker_beside_the_nodes() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    assert worker["command"] == ["callgate", "worker"]
    assert worker["environment"]["CALLGATE_REDIS_URL"].startswith("redis://")


def test_livekit_webhooks_go_to_the_load_balancer_not_a_node() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    livekit = yaml.safe_load((ROOT / "docker" / "livekit.yaml").read_text())
    assert livekit["webhook"]["urls"] == ["http://balancer/v1/livekit/webhook"]
    assert livekit["webhook"]["api_key"] in livekit["keys"]
    balancer = (ROOT / "docker" / "balancer.conf").read_text()
    nodes = [name for name in compose["services"] if name.startswith("callgate-")]
    assert len(nodes) >= 2
    for node in nodes:
        assert f"server {node}:8000" in balancer
        assert "ports" not in compose["services"][node]  # reached only through the balancer
    assert livekit["redis"]["address"].startswith("livekit-redis:")  # LiveKit's own Redis
