"""How the parent emits one notification to each kind of server.

Every emitter stamps the frame with the wall time it was emitted at (``data: {"t": ...}``) and
goes through Redis once, as the project does:

- ours: ``await anotify("everyone", "bench", data={"t": t})``, the public API, in this process
  against the server's database; it stores the event and publishes it on the channel layer
  (channels-redis) when the transaction commits; the server's hub fans it out.
- bare: ``PUBLISH`` of a ready-made frame of the same shape on a Redis pub/sub channel.
- stock: ``group_send`` on a stock channels-redis layer; every consumer sends the payload.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def frame(event_id: int, t: float) -> dict[str, Any]:
    """The same shape as the project's ``notification`` frame (PROTOCOL.md)."""
    return {
        "type": "notification",
        "id": event_id,
        "title": "bench",
        "body": "",
        "url": "",
        "level": "info",
        "topic": None,
        "data": {"t": t},
        "created_at": datetime.now(UTC).isoformat(),
        "read": False,
        "replay": False,
    }


class OursEmitter:
    """Emits through ``notifications.anotify`` (Django must be set up in this process)."""

    async def emit(self, seq: int) -> tuple[int, float]:
        from notifications import anotify

        t = time.time()
        event = await anotify("everyone", "bench", data={"t": t})
        return event.id, t

    async def emit_to(self, user: Any) -> tuple[int, float]:
        from notifications import anotify

        t = time.time()
        event = await anotify(user, "bench", data={"t": t})
        return event.id, t

    async def close(self) -> None:
        pass


class PushEmitter:
    """Emits a transient push (``notifications.apush``) to everyone: nothing is stored. The
    frame is ``{"type": "push", "event": "bench", "data": {"id": SEQ, "t": T}}``, which the
    clients count like a notification (bench/clients.py)."""

    async def emit(self, seq: int) -> tuple[int, float]:
        from notifications import apush

        t = time.time()
        await apush("everyone", "bench", {"id": seq, "t": t})
        return seq, t

    async def close(self) -> None:
        pass


class BareEmitter:
    def __init__(self, redis_url: str, channel: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(redis_url)
        self.channel = channel

    async def emit(self, seq: int) -> tuple[int, float]:
        t = time.time()
        await self.client.publish(self.channel, _dumps(frame(seq, t)))
        return seq, t

    async def close(self) -> None:
        await self.client.aclose()


class StockEmitter:
    def __init__(self, redis_url: str, group: str) -> None:
        from channels_redis.core import RedisChannelLayer

        self.layer = RedisChannelLayer(hosts=[redis_url])
        self.group = group

    async def emit(self, seq: int) -> tuple[int, float]:
        t = time.time()
        await self.layer.group_send(self.group, {"type": "bench.message", "payload": frame(seq, t)})
        return seq, t

    async def close(self) -> None:
        await self.layer.close_pools()
