"""The raw sender. Call it only through ``services`` (which wraps it in ``on_commit``)."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import time
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from .. import eventlog, metrics
from ..conf import notifications_settings
from .messages import EVENT, EVENTS, HUB_GROUP

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


_pending: set[concurrent.futures.Future] = set()
_pending_lock = threading.Lock()


async def _group_send(layer: Any, message: dict[str, Any]) -> None:
    try:
        await asyncio.wait_for(layer.group_send(HUB_GROUP, message), PUBLISH_TIMEOUT)
    except Exception as exc:
        metrics.PUBLISH_FAILURES.inc()
        logger.exception("publish failed for %s; hubs will catch up by polling", message["type"])
        eventlog.emit("publish_failure", message=message["type"], error=eventlog.describe(exc))


def _done(future: concurrent.futures.Future) -> None:
    with _pending_lock:
        _pending.discard(future)


def _send(layer: Any, message: dict[str, Any]) -> None:
    if isinstance(layer, InMemoryChannelLayer):
        # Its queues belong to the server's loop and are not thread-safe: hand the send to
        # that loop (async_to_sync does, from a sync thread the server started).
        async_to_sync(layer.group_send)(HUB_GROUP, message)
        return
    # Not waited for: the caller (a request, on commit) does not need the Redis round trip,
    # and a failure is only logged anyway. Sends start in call order on the one loop.
    future = asyncio.run_coroutine_threadsafe(_group_send(layer, message), _publisher.get())
    with _pending_lock:
        _pending.add(future)
    future.add_done_callback(_done)


def flush(timeout: float = PUBLISH_TIMEOUT) -> bool:
    """Wait until the sends started so far are done (at most ``timeout`` seconds); False if
    some are not. Runs at interpreter exit, so that a short-lived process (``manage.py
    notify``, a worker's task) does not exit with its last notifications unsent."""
    with _pending_lock:
        pending = list(_pending)
    if not pending:
        return True
    _, not_done = concurrent.futures.wait(pending, timeout)
    return not not_done


atexit.register(flush)


def _stamped(message: dict[str, Any]) -> dict[str, Any]:
    """An event message (or a batch of them) with its commit time, counted as published.

    This runs on commit: ``committed_at`` starts the hubs' delivery latency histogram."""
    kind = message["type"]
    if kind == EVENT:
        metrics.EVENTS_PUBLISHED.inc()
        return {**message, "committed_at": time.time()}
    if kind == EVENTS:
        now = time.time()
        metrics.EVENTS_PUBLISHED.inc(len(message["events"]))
        return {**message, "events": [{**e, "committed_at": now} for e in message["events"]]}
    return message


def publish_raw(message: dict[str, Any]) -> None:
    """Send ``message`` to every hub now, outside any transaction check.

    A failure is logged, never raised: the row is already committed and every hub's poll
    (``POLL_INTERVAL``) delivers events the layer lost.
    """
    layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
    if layer is None:
        return
    message = _stamped(message)
    try:
        _send(layer, message)
    except Exception as exc:
        metrics.PUBLISH_FAILURES.inc()
        logger.exception("publish failed for %s; hubs will catch up by polling", message["type"])
        eventlog.emit("publish_failure", message=message["type"], error=eventlog.describe(exc))


def publish_on_commit(message: dict[str, Any]) -> None:
    """Publish ``message`` when the current transaction commits (at once outside one);
    nothing if it rolls back. Every write that reaches sockets publishes this way."""
    transaction.on_commit(partial(publish_raw, message), robust=True)
