"""What ``/healthz`` and ``/readyz`` check: the database, and the channel layer when it spans
processes (Redis).

The layer check is a real round trip: a message sent to this process's own probe channel and
received back through the layer, within ``HEALTH_TIMEOUT``. The in-memory layer is not checked
(it lives inside this process and cannot be down).
"""

from __future__ import annotations

import asyncio
import uuid
import weakref

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import DatabaseError, connection

from .conf import notifications_settings
from .realtime.messages import PROCESS_CHANNEL_PREFIX

PROBE = "notifications.health"


def check_database() -> str | None:
    """None when the database answers ``SELECT 1``, else why not."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}".strip()[:200]
    return None


class _Probe:
    """One probe channel per event loop, reused while the layer answers: a pub/sub layer
    subscribes to each channel it receives on, so a channel per check would pile up."""

    def __init__(self) -> None:
        self.channel: str | None = None
        self.lock = asyncio.Lock()


_probes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Probe] = weakref.WeakKeyDictionary()


def layer_checked() -> bool:
    """Whether the channel layer is one that :func:`check_layer` round-trips (not in-memory)."""
    layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


async def check_layer(timeout: float | None = None) -> str | None:
    """None when a message makes the round trip through the channel layer within
    ``timeout`` (default ``HEALTH_TIMEOUT``) or the layer is not checked; else why not."""
    layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    timeout = notifications_settings.HEALTH_TIMEOUT if timeout is None else timeout
    loop = asyncio.get_running_loop()
    probe = _probes.get(loop)
    if probe is None:
        probe = _probes[loop] = _Probe()
    async with probe.lock:
        nonce = uuid.uuid4().hex
        try:
            async with asyncio.timeout(timeout):
                if probe.channel is None:
                    # The hub's prefix: with channels_redis's list-based layer a channel of
                    # another prefix is not read while the hub's receive holds the layer's
                    # receive loop (healthz timed out once the hub ran; REDIS_LAYER=core).
                    probe.channel = await layer.new_channel(PROCESS_CHANNEL_PREFIX)
                await layer.send(probe.channel, {"type": PROBE, "nonce": nonce})
                while True:  # a late answer to an earlier check may come first
                    message = await layer.receive(probe.channel)
                    if message.get("nonce") == nonce:
                        return None
        except TimeoutError:
            probe.channel = None  # the cancelled receive dropped its subscription
            return f"no round trip within {timeout} s"
        except Exception as exc:
            probe.channel = None
            return f"{type(exc).__name__}: {exc}".strip()[:200]
