"""The ``NOTIFICATIONS`` settings dict, read through one object with documented defaults.

Modelled on Django REST framework's ``api_settings``: unknown keys are rejected (a typo must not
silently fall back to a default) and the cache is dropped on ``setting_changed`` so that
``override_settings`` works in tests. Every key is documented in docs/settings.md.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Origins allowed for the WebSocket handshake in addition to ALLOWED_HOSTS
    # (scheme://host[:port]); the project fills it from NOTIFICATIONS_ALLOWED_ORIGINS.
    "ALLOWED_ORIGINS": [],
    # Accept handshakes without an Origin header (not a browser: scripts, services).
    "ALLOW_MISSING_ORIGIN": True,
    # Channel-layer alias used for fan-out between server processes.
    "CHANNEL_LAYER": "default",
    # Most events one replay sends; more sets `complete: false`.
    "REPLAY_LIMIT": 200,
    # Largest client frame in bytes; bigger closes with 1009.
    "MAX_FRAME_BYTES": 64 * 1024,
    # Client frames allowed per window, per user (per connection for anonymous visitors).
    "RATE_LIMIT_FRAMES": 50,
    "RATE_LIMIT_WINDOW": 10.0,
    # Frames a client may still send after `rate_limited` within the window before 4429.
    "RATE_LIMIT_GRACE": 10,
    # Open sockets per signed-in user in one server process; None for no cap.
    "MAX_CONNECTIONS_PER_USER": 50,
    # Open sockets per client IP in one server process; None (off) since NAT and proxies
    # put many visitors behind one address.
    "MAX_CONNECTIONS_PER_IP": None,
    # Seconds between the hub's reads of committed events it was not told about (events
    # sent by another process with no shared channel layer, or lost by the layer).
    "POLL_INTERVAL": 1.0,
    # Seconds the hub waits for a missing lower id to arrive before asking the database.
    "GAP_WAIT": 0.05,
    # Threads (each with its own database connection) for the database work of WebSocket
    # handshakes, which runs in batches (realtime/batching.py). One is fastest on a nearby
    # database (the threads fight the event loop for the GIL); 2 lets a batch of sessions and
    # a batch of hello counts wait for a distant database at the same time.
    "HANDSHAKE_THREADS": 1,
    # Run the handshake's compiled queries (membership, hello) as PostgreSQL prepared
    # statements: planning them cost 5x their execution. None: on, unless the database sets
    # DISABLE_SERVER_SIDE_CURSORS (the Django setting for transaction-pooling proxies).
    "PREPARED_QUERIES": None,
    # Seconds between checks that connected users' sessions still exist and users are active.
    "SESSION_CHECK_INTERVAL": 2.0,
    # Seconds during which a repeated idempotency key returns the first event.
    "IDEMPOTENCY_WINDOW": 24 * 3600,
    # Largest encoded `push` frame (services.push) in bytes: transient frames go to every
    # matching socket at once and are not stored, so they stay small.
    "MAX_PUSH_BYTES": 16 * 1024,
    # Users per group_send message before the hub looks recipients up in the database.
    "MAX_INLINE_RECIPIENTS": 1000,
    # Write pre-built frames straight to the server's transport (daphne, uvicorn) instead of
    # one ASGI message per socket. Off: always the plain ASGI send.
    "FAST_WRITES": True,
    # Bytes that may wait in one socket's send buffer (a client that stops reading) before the
    # server drops it; it catches up on reconnect. Needs a fast writer; None for no cap.
    "MAX_BUFFERED_BYTES": 1024 * 1024,
    # Seconds a client has to send a complete HTTP request head (the WebSocket upgrade
    # included) before uvicorn with notifications.realtime.uvicorn_http drops it; None: off.
    "REQUEST_HEAD_TIMEOUT": 10.0,
    # Seconds between gc.freeze() calls while the process serves sockets, which keeps the
    # cyclic collector's full pauses short (realtime/gcpolicy.py); None: leave gc alone.
    "GC_FREEZE_INTERVAL": 10.0,
    # Seconds between planned full collections of the frozen objects; None: never.
    "GC_FULL_COLLECT_INTERVAL": 600.0,
    # Client networks (CIDR) that may read GET /metrics; [] closes it to all but the token.
    "METRICS_ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"],
    # A bearer token that opens GET /metrics to any client that sends it; None: no token.
    "METRICS_TOKEN": None,
    # Seconds /healthz waits for a channel-layer round trip (non in-memory layers).
    "HEALTH_TIMEOUT": 1.0,
    # Age of the notifications `manage.py purge_notifications` deletes when it is given no
    # --older-than: "90d", "12h", "30m" or a timedelta; None: the option is required.
    "RETENTION": None,
    # One JSON line per socket event (connect, reject, close, replay, error) and publish
    # failure on the notifications.events logger (notifications/eventlog.py).
    "JSON_LOGS": False,
    # Seconds a SIGTERM drain answers /readyz with 503 before it closes the sockets.
    "DRAIN_GRACE": 0.0,
    # Seconds a SIGTERM drain waits for closed sockets to finish before the server stops.
    "DRAIN_TIMEOUT": 5.0,
    # HTTP API (docs/api.md): requests per minute per token when the token sets no rate.
    "API_RATE": 600,
    # HTTP API: largest request body in bytes (a batch of 100 included); bigger gets 400.
    "API_MAX_BODY_BYTES": 512 * 1024,
    # Language codes lazy titles and bodies are rendered in (notifications/i18n.py); None:
    # the codes of settings.LANGUAGES.
    "LANGUAGES": None,
    # Seconds between each server process's looks for broadcasts due to be sent (scheduled
    # ones and "send now"); a due broadcast goes out within about this long.
    "SCHEDULER_INTERVAL": 0.5,
    # Seconds after which a broadcast claimed by a process that never finished sending it
    # (the process died) may be claimed again. The send itself is one transaction.
    "SEND_CLAIM_TIMEOUT": 60.0,
    # "Send now" of a broadcast naming more users than this one by one (each costs a row) is
    # handed to the background sender; smaller audiences are sent in the admin request.
    "SEND_INLINE_MAX_USERS": 1000,
    # Seconds between each server process's presence reports (presence.snapshot()).
    "PRESENCE_INTERVAL": 2.0,
    # Seconds after which a process that stopped reporting drops out of presence.
    "PRESENCE_TTL": 5.0,
}


class NotificationsSettings:
    """Attribute access to ``settings.NOTIFICATIONS`` merged over :data:`DEFAULTS`."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        user = getattr(settings, "NOTIFICATIONS", {}) or {}
        if not isinstance(user, dict):
            raise ImproperlyConfigured("NOTIFICATIONS must be a dict.")
        unknown = sorted(set(user) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown NOTIFICATIONS key(s): {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(DEFAULTS))}."
            )
        return {**DEFAULTS, **user}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Invalid NOTIFICATIONS setting: {name!r}")
        if self._cached is None:
            self._cached = self._load()
        return self._cached[name]

    def reload(self) -> None:
        self._cached = None


notifications_settings = NotificationsSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "NOTIFICATIONS":
        notifications_settings.reload()


setting_changed.connect(_reload)
