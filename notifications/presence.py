"""Who is online now, across server processes (PROTOCOL.md, "Presence").

Each server process reports its open connections every ``PRESENCE_INTERVAL`` seconds
(realtime/scheduler.py). A report lives ``PRESENCE_TTL`` seconds, so the connections of a
process that dies drop out within that time. Reports go where every process of the site can
read them:

- Redis, when the channel layer is channels_redis: one key per process with an expiry, plus a
  set naming the processes (``notifications:presence:*``);
- otherwise the database: one :class:`~notifications.models.PresenceProcess` row per process,
  ignored once older than the TTL.

:func:`snapshot` answers from any process, ``manage.py shell`` included.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .conf import notifications_settings

__all__ = [
    "ProcessReport",
    "online_user_ids",
    "overview",
    "process_id",
    "processes",
    "snapshot",
]

logger = logging.getLogger(__name__)

# Unique per process (a pid alone repeats across machines and restarts).
_PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def process_id() -> str:
    """The name this process reports its connections under."""
    return _PROCESS


@dataclass
class ProcessReport:
    """One process's open connections."""

    process: str
    users: list[int] = field(default_factory=list)
    anonymous: int = 0
    connections: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "process": self.process,
                "users": self.users,
                "anonymous": self.anonymous,
                "connections": self.connections,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ProcessReport:
        data = json.loads(text)
        return cls(
            process=str(data["process"]),
            users=[int(uid) for uid in data.get("users", [])],
            anonymous=int(data.get("anonymous", 0)),
            connections=int(data.get("connections", 0)),
        )


def redis_host() -> Any | None:
    """The first Redis host of the channel layer (a URL, a dict with ``address`` or with
    ``sentinels``, or a (host, port) pair), or None for a layer without Redis (then the
    database keeps the reports). With shards, every process uses the first one."""
    layer = settings.CHANNEL_LAYERS.get(notifications_settings.CHANNEL_LAYER, {})
    if not str(layer.get("BACKEND", "")).startswith("channels_redis"):
        return None
    hosts = layer.get("CONFIG", {}).get("hosts") or ["redis://127.0.0.1:6379"]
    return hosts[0]


def _prefix() -> str:
    """Keys live under the channel layer's own prefix, so sites sharing a Redis (each with
    its prefix) do not see each other's connections."""
    layer = settings.CHANNEL_LAYERS.get(notifications_settings.CHANNEL_LAYER, {})
    return f"{layer.get('CONFIG', {}).get('prefix', 'asgi')}:notifications:presence:"


_redis_clients: dict[str, Any] = {}
_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}


def _connect(host: Any) -> Any:
    import redis

    if isinstance(host, dict) and "sentinels" in host:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(
            [tuple(item) for item in host["sentinels"]],
            sentinel_kwargs=host.get("sentinel_kwargs"),
            **_TIMEOUTS,
        )
        return sentinel.master_for(
            host.get("master_name", "mymaster"),
            db=host.get("db", 0),
            password=host.get("password"),
            **_TIMEOUTS,
        )
    if isinstance(host, dict):
        options = {key: value for key, value in host.items() if key != "address"}
        return redis.Redis.from_url(host["address"], **{**_TIMEOUTS, **options})
    if isinstance(host, (tuple, list)):
        return redis.Redis(host=host[0], port=int(host[1]), **_TIMEOUTS)
    # A URL; rediss:// and its query (TLS options) are redis-py's own.
    return redis.Redis.from_url(str(host), **_TIMEOUTS)


def _redis() -> Any:
    host = redis_host()
    assert host is not None
    key = repr(host)
    client = _redis_clients.get(key)
    if client is None:
        client = _redis_clients[key] = _connect(host)
    return client


def _ttl() -> float:
    return float(notifications_settings.PRESENCE_TTL)


def report(state: ProcessReport) -> None:
    """Store this process's report (called by the server's presence loop)."""
    if redis_host() is not None:
        client = _redis()
        prefix = _prefix()
        pipe = client.pipeline()
        pipe.set(prefix + state.process, state.to_json(), px=int(_ttl() * 1000))
        pipe.sadd(prefix + "processes", state.process)
        pipe.execute()
        return
    from .models import PresenceProcess

    now = timezone.now()
    PresenceProcess.objects.update_or_create(
        process=state.process,
        defaults={
            "users": state.users,
            "anonymous": state.anonymous,
            "connections": state.connections,
            "updated_at": now,
        },
    )
    # Rows of processes long gone (a crash leaves one behind) are removed by the reporters,
    # not by readers: a page that shows who is online must not write.
    PresenceProcess.objects.filter(updated_at__lt=now - timedelta(minutes=10)).delete()


def withdraw(process: str) -> None:
    """Forget a process's report (it stops)."""
    if redis_host() is not None:
        client, prefix = _redis(), _prefix()
        client.delete(prefix + process)
        client.srem(prefix + "processes", process)
        return
    from .models import PresenceProcess

    PresenceProcess.objects.filter(process=process).delete()


def processes() -> list[ProcessReport]:
    """The live reports of every server process, by process name."""
    if redis_host() is not None:
        client, prefix = _redis(), _prefix()
        names = sorted(name.decode() for name in client.smembers(prefix + "processes"))
        if not names:
            return []
        values = client.mget([prefix + name for name in names])
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone:  # expired: the process stopped reporting
            client.srem(prefix + "processes", *gone)
        return [ProcessReport.from_json(value) for value in values if value is not None]
    from .models import PresenceProcess

    fresh_after = timezone.now() - timedelta(seconds=_ttl())
    rows = PresenceProcess.objects.filter(updated_at__gte=fresh_after).order_by("process")
    return [
        ProcessReport(
            process=row.process,
            users=[int(uid) for uid in row.users],
            anonymous=row.anonymous,
            connections=row.connections,
        )
        for row in rows
    ]


def snapshot() -> dict[str, Any]:
    """``{"users": [ids online, each once], "anonymous": n, "connections": n}`` over every
    server process of the site, at most ``PRESENCE_TTL`` seconds stale."""
    reports = processes()
    users = sorted({uid for report in reports for uid in report.users})
    return {
        "users": users,
        "anonymous": sum(report.anonymous for report in reports),
        "connections": sum(report.connections for report in reports),
    }


def online_user_ids() -> set[int]:
    """The ids of the users online now, or an empty set (logged) when the presence store
    cannot be read: an "online" column must not take a page down with Redis."""
    try:
        return set(snapshot()["users"])
    except Exception:
        logger.warning("presence is unavailable; showing nobody online", exc_info=True)
        return set()


def overview(*, limit: int = 500) -> dict[str, Any]:
    """What the admin's *Online now* shows: totals, up to ``limit`` usernames online (sorted),
    and each process's connections."""
    from django.contrib.auth import get_user_model

    reports = processes()
    users = sorted({uid for report in reports for uid in report.users})
    names = sorted(
        user.get_username()
        for user in get_user_model()._default_manager.filter(pk__in=users[:limit])
    )
    return {
        "online_users": len(users),
        "anonymous": sum(report.anonymous for report in reports),
        "connections": sum(report.connections for report in reports),
        "users": names,
        "users_shown": len(names),
        "processes": [
            {
                "process": report.process,
                "connections": report.connections,
                "users": len(report.users),
                "anonymous": report.anonymous,
            }
            for report in reports
        ],
    }
