"""Background work of each server process, started with its hub: the broadcast sender and the
presence reports.

Both run in the server itself, so ``make run`` (one daphne process, SQLite, in-memory layer)
needs nothing else, and N processes behind a load balancer each run them: the sender claims
each due broadcast with a conditional UPDATE, so one process sends it (broadcasting.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .. import broadcasting, presence
from ..conf import notifications_settings
from . import presence_watch

if TYPE_CHECKING:
    from .connection import Connection
    from .hub import Hub

logger = logging.getLogger(__name__)


def _in_own_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` in a worker thread with its own database connection. Not the thread that
    serves handshakes and replays: a send to 100,000 users takes seconds there."""

    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


_send_due = _in_own_thread(broadcasting.send_due)
_report = _in_own_thread(presence.report)
_withdraw = _in_own_thread(presence.withdraw)
_record = _in_own_thread(broadcasting.record_live_delivery)


async def send_due_forever() -> None:
    """Send due broadcasts, looking every ``SCHEDULER_INTERVAL`` seconds."""
    while True:
        try:
            for outcome in await _send_due():
                logger.info("broadcast %s: %s", outcome.broadcast_id, outcome.detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the broadcast sender failed; retrying")
        await asyncio.sleep(notifications_settings.SCHEDULER_INTERVAL)


def process_report(hub: Hub) -> presence.ProcessReport:
    """This process's open connections, as presence reports them."""
    total = len(hub.connections)
    return presence.ProcessReport(
        process=presence.process_id(),
        users=list(hub.by_user),
        anonymous=total - len(hub.authenticated),
        connections=total,
    )


async def report_presence_forever(hub: Hub) -> None:
    """Report this process's connections every ``PRESENCE_INTERVAL`` seconds; withdraw the
    report when the hub stops."""
    try:
        while True:
            try:
                await _report(process_report(hub))
                await presence_watch.push(hub)  # staff watching "Online now" live
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not report presence; retrying", exc_info=True)
            await asyncio.sleep(notifications_settings.PRESENCE_INTERVAL)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_withdraw(presence.process_id()), 2)


def start(hub: Hub) -> list[asyncio.Task]:
    """Start this process's background work; the hub cancels the tasks when it stops."""
    return [
        asyncio.ensure_future(send_due_forever()),
        asyncio.ensure_future(report_presence_forever(hub)),
    ]


_pending: set[asyncio.Task] = set()


def count_delivery(event_id: int, targets: list[Connection]) -> None:
    """After a tracked event's fan-out: add what this process delivered live to the
    broadcast's counts, off the fan-out path (one UPDATE in a worker thread)."""
    users = {conn.user_id for conn in targets if conn.user_id is not None}
    anonymous = sum(1 for conn in targets if conn.user_id is None)
    task = asyncio.ensure_future(
        _record(event_id, users=len(users), anonymous=anonymous, connections=len(targets))
    )
    _pending.add(task)  # keep a reference until done (asyncio holds only weak ones)
    task.add_done_callback(_pending.discard)
