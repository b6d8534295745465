"""Live presence for staff over their own socket (the admin's *Online now* page).

A socket sends ``{"type": "watch_presence"}``; if its user may see presence (active staff with
``notifications.view_presenceprocess``) it gets a ``presence`` frame at once and then after
each of this process's presence reports (every ``PRESENCE_INTERVAL``) while it stays open.
Any other socket gets ``error`` ``forbidden``. The figures come from ``presence.overview()``,
read once per report for all the watching sockets of the process.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .. import presence
from . import frames
from .transport import Frame

if TYPE_CHECKING:
    from .connection import Connection
    from .hub import Hub

PERMISSION = "notifications.view_presenceprocess"
SHOWN_USERS = 500

# Per hub: the sockets watching; a closed socket is dropped at the next push (the hub has
# detached it by then).
_watchers: weakref.WeakKeyDictionary[Hub, set[Connection]] = weakref.WeakKeyDictionary()


def may_watch(user: Any) -> bool:
    """Whether ``user`` may see who is online (as the admin page requires)."""
    return bool(
        user.is_authenticated and user.is_active and user.is_staff and user.has_perm(PERMISSION)
    )


def _overview() -> dict[str, Any]:
    close_old_connections()
    try:
        return presence.overview(limit=SHOWN_USERS)
    finally:
        close_old_connections()


_read_overview = sync_to_async(_overview, thread_sensitive=False)


def presence_frame(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "presence", **data}


async def current() -> dict[str, Any]:
    """A ``presence`` frame of the figures now."""
    return presence_frame(await _read_overview())


def watch(hub: Hub, conn: Connection) -> None:
    """Push the figures to ``conn`` after each of the hub's reports from now on. Call it after
    answering with :func:`current`, so that the answer (with its ``ref``) comes first."""
    _watchers.setdefault(hub, set()).add(conn)


async def push(hub: Hub) -> None:
    """Send the current figures to every watching socket of ``hub`` (after a report)."""
    watchers = _watchers.get(hub)
    if not watchers:
        return
    watchers.intersection_update(hub.connections)
    watching = list(watchers)
    if not watching:
        return
    frame = Frame(frames.encode(presence_frame(await _read_overview())))
    for conn in watching:
        await conn.send_control(frame)
