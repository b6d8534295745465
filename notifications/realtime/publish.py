"""The raw sender. Call it only through ``services`` (which wraps it in ``on_commit``)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from ..conf import notifications_settings
from .messages import HUB_GROUP

logger = logging.getLogger(__name__)

# A layer that hangs must not hold up the request that sent the notification for long.
PUBLISH_TIMEOUT = 2.0


class _PublisherLoop:
    """One event loop in a daemon thread per process, for publishing from sync code.

    ``async_to_sync`` outside a running loop makes a new loop for every call, and
    channels-redis a new connection pool for every loop: about 4 ms a notification. A loop
    that lives as long as the process keeps one pool. Rebuilt after a fork (workers of a
    pre-forking server), since the parent's thread does not run in the child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="notifications-publisher", daemon=True
                ).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_publisher = _PublisherLoop()


def _send(layer: Any, message: dict[str, Any]) -> None:
    if isinstance(layer, InMemoryChannelLayer):
        # Its queues belong to the server's loop and are not thread-safe: hand the send to
        # that loop (async_to_sync does, from a sync thread the server started).
        async_to_sync(layer.group_send)(HUB_GROUP, message)
        return
    future = asyncio.run_coroutine_threadsafe(
        layer.group_send(HUB_GROUP, message), _publisher.get()
    )
    try:
        future.result(PUBLISH_TIMEOUT)
    finally:
        future.cancel()  # no-op when done; stops a send stuck on a dead connection


def publish_raw(message: dict[str, Any]) -> None:
    """Send ``message`` to every hub now, outside any transaction check.

    A failure is logged, never raised: the row is already committed and every hub's poll
    (``POLL_INTERVAL``) delivers events the layer lost.
    """
    layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
    if layer is None:
        return
    try:
        _send(layer, message)
    except Exception:
        logger.exception("publish failed for %s; hubs will catch up by polling", message["type"])
