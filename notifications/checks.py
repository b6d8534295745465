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


@checks.register()
def check_operations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The operations settings (ids E020-E029, W020-W029): /metrics access and retention."""
    import ipaddress

    from .retention import parse_age

    try:
        networks = notifications_settings.METRICS_ALLOWED_NETWORKS
        token = notifications_settings.METRICS_TOKEN
        retention = notifications_settings.RETENTION
    except ImproperlyConfigured:
        return []  # reported by check_settings (E001)
    messages: list[checks.CheckMessage] = []
    for entry in networks:
        try:
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            messages.append(
                checks.Error(
                    f"NOTIFICATIONS['METRICS_ALLOWED_NETWORKS'] has {entry!r}, which is not a "
                    "network (CIDR such as 10.0.0.0/8, or an address).",
                    id="notifications.E020",
                )
            )
    if token is not None and len(str(token)) < 16:
        messages.append(
            checks.Warning(
                "NOTIFICATIONS['METRICS_TOKEN'] is shorter than 16 characters.",
                hint="Use a long random value, for example secrets.token_urlsafe(32).",
                id="notifications.W020",
            )
        )
    if retention not in (None, ""):
        try:
            parse_age(retention)
        except ValueError as exc:
            messages.append(
                checks.Error(f"NOTIFICATIONS['RETENTION']: {exc}.", id="notifications.E021")
            )
    return messages
