"""System checks: configuration mistakes found at startup (ids notifications.E00x/W00x)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .conf import notifications_settings


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    try:
        notifications_settings.reload()
        alias = notifications_settings.CHANNEL_LAYER
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="notifications.E001")]
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    if alias not in layers:
        messages.append(
            checks.Error(
                f"NOTIFICATIONS['CHANNEL_LAYER'] is {alias!r}, which CHANNEL_LAYERS does not "
                "define.",
                hint="Define it in CHANNEL_LAYERS (channels_redis in production).",
                id="notifications.E002",
            )
        )
    elif layers[alias].get("BACKEND", "").endswith("InMemoryChannelLayer") and not settings.DEBUG:
        messages.append(
            checks.Warning(
                "The in-memory channel layer does not span processes: with several server "
                "processes, live events reach only the process that sent them (the others pick "
                "them up from the database every POLL_INTERVAL).",
                hint="Set REDIS_URL (channels_redis.core.RedisChannelLayer) in production.",
                id="notifications.W001",
            )
        )
    vendor = connections["default"].vendor
    if vendor == "sqlite" and not settings.DEBUG:
        messages.append(
            checks.Warning(
                "SQLite serialises every write; with several server processes or much traffic, "
                "requests queue on its lock.",
                hint="Set DATABASE_URL to PostgreSQL in production.",
                id="notifications.W002",
            )
        )
    if vendor not in ("sqlite", "postgresql"):
        messages.append(
            checks.Warning(
                f"Event ids are kept in commit order on SQLite and PostgreSQL only; on {vendor} a "
                "resuming client could skip an event whose transaction committed late.",
                id="notifications.W003",
            )
        )
    if "*" in settings.ALLOWED_HOSTS:
        messages.append(
            checks.Warning(
                "ALLOWED_HOSTS contains '*': every Origin is then an allowed host, so the "
                "WebSocket handshake has no protection against cross-site hijacking.",
                hint="List the site's host names in ALLOWED_HOSTS (docs/security.md).",
                id="notifications.W004",
            )
        )
    return messages
