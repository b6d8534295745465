"""System checks and the NOTIFICATIONS settings object."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from notifications.checks import check_settings
from notifications.conf import notifications_settings

REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def ids(**overrides):
    with override_settings(**overrides):
        return [message.id for message in check_settings()]


def test_unknown_key_is_an_error():
    assert ids(NOTIFICATIONS={"REPLAY_LIMT": 5}) == ["notifications.E001"]
    with (
        override_settings(NOTIFICATIONS={"REPLAY_LIMT": 5}),
        pytest.raises(ImproperlyConfigured, match="Unknown NOTIFICATIONS key"),
    ):
        notifications_settings.REPLAY_LIMIT  # noqa: B018


def test_missing_layer_alias_is_an_error():
    assert "notifications.E002" in ids(NOTIFICATIONS={"CHANNEL_LAYER": "nope"})


def test_in_memory_layer_in_production_is_a_warning():
    assert "notifications.W001" in ids(DEBUG=False, CHANNEL_LAYERS=IN_MEMORY)
    assert "notifications.W001" not in ids(DEBUG=True, CHANNEL_LAYERS=IN_MEMORY)
    assert "notifications.W001" not in ids(DEBUG=False, CHANNEL_LAYERS=REDIS)


def test_settings_reload_on_override():
    assert notifications_settings.REPLAY_LIMIT == 200
    with override_settings(NOTIFICATIONS={"REPLAY_LIMIT": 7}):
        assert notifications_settings.REPLAY_LIMIT == 7
    assert notifications_settings.REPLAY_LIMIT == 200


def test_check_deploy_is_clean_with_production_settings():
    """`manage.py check --deploy` in a fresh process with the production environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "NOTIFICATIONS_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="x9!" * 20 + "production-secret-key-for-the-check",
        DJANGO_ALLOWED_HOSTS="app.example.com",
        DATABASE_URL="postgres://app@db.internal:5432/app",
        REDIS_URL="redis://redis.internal:6379/0",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_wildcard_allowed_hosts_is_a_warning():
    """With '*' every Origin is an allowed host (docs/security.md, Origin policy)."""
    assert "notifications.W004" in ids(ALLOWED_HOSTS=["*"])
    assert "notifications.W004" not in ids(ALLOWED_HOSTS=["app.example.com"])


def test_operations_checks():
    from django.core import checks as django_checks
    from django.test import override_settings

    def ids() -> list[str]:
        return sorted(m.id for m in django_checks.run_checks() if m.id.startswith("notifications."))

    ops = {"notifications.E020", "notifications.W020", "notifications.E021"}
    assert not ops & set(ids())
    bad = {
        "METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8", "not a network"],
        "METRICS_TOKEN": "short",
        "RETENTION": "90 days",
    }
    with override_settings(NOTIFICATIONS=bad):
        found = ids()
    assert ops <= set(found)
    good = {"METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8", "::1"], "RETENTION": "90d"}
    with override_settings(NOTIFICATIONS=good):
        assert not ops & set(ids())
