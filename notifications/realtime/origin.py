"""Handshake guard against cross-site WebSocket hijacking (PROTOCOL.md, "Handshake").

An ``Origin`` is allowed when its host is in ``ALLOWED_HOSTS`` (any scheme and port) or when it
equals an entry of ``NOTIFICATIONS["ALLOWED_ORIGINS"]`` (scheme, host and port). ``null`` and
anything else are refused with HTTP 403 before accept. A handshake with no ``Origin`` (not a
browser) is allowed unless ``ALLOW_MISSING_ORIGIN`` is off.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

from .. import eventlog, metrics
from ..conf import notifications_settings

logger = logging.getLogger("notifications.realtime")


def _parse(origin: str) -> tuple[str, str] | None:
    """(``scheme://host:port`` with the default port filled in, host as Django writes it)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    # IPv6 literals keep their brackets, as in ALLOWED_HOSTS ("[::1]").
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port or default}", host


def _normalise(origin: str) -> str | None:
    parsed = _parse(origin)
    return parsed[0] if parsed else None


def origin_allowed(origin: str | None) -> bool:
    if origin is None:
        return bool(notifications_settings.ALLOW_MISSING_ORIGIN)
    parsed = _parse(origin)
    if parsed is None:  # "null", opaque or malformed origins
        return False
    normalised, host = parsed
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if validate_host(host, allowed_hosts):
        return True
    extra = {_normalise(item) for item in notifications_settings.ALLOWED_ORIGINS}
    return normalised in extra


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


class OriginGuard:
    """ASGI middleware: refuse a WebSocket handshake from a foreign origin with 403."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = header(scope, b"origin")
        if scope["type"] == "websocket" and not origin_allowed(origin):
            client = scope.get("client") or ("?", 0)
            logger.warning("ws.reject origin=%r client=%s", origin, client[0])
            metrics.handshake("origin")
            eventlog.emit("reject", reason="origin", origin=origin, client=client[0])
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
