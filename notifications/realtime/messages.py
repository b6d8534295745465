"""Channel-layer messages between services and the per-process hubs.

They are small dicts with a ``type``. An event travels as its pre-encoded live frame plus the
audience, so that a hub never encodes JSON or touches the database on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# All hubs (one per server process) listen on this group.
HUB_GROUP = "notifications.hubs"

EVENT = "notifications.event"
UNREAD = "notifications.unread"
MEMBERSHIP = "notifications.membership"
SESSION_ENDED = "notifications.session_ended"


def event(
    *,
    event_id: int,
    frame: str,
    reach: str,
    users: Sequence[int],
    groups: Sequence[int],
    topic_id: int | None,
    max_inline: int | None = None,
    track: bool = False,
) -> dict[str, Any]:
    from ..conf import notifications_settings

    limit = notifications_settings.MAX_INLINE_RECIPIENTS if max_inline is None else max_inline
    return {
        "type": EVENT,
        "id": event_id,
        "frame": frame,
        "reach": reach,
        # None: too many to carry; the hub asks the database about its local users.
        "users": list(users) if len(users) <= limit else None,
        "groups": list(groups),
        "topic": topic_id,
        # Each hub reports how many it delivered live (a broadcast's follow-up); optional.
        "track": track,
    }


def unread(*, user_id: int, count: int, exclude: str | None) -> dict[str, Any]:
    return {"type": UNREAD, "user": user_id, "count": count, "exclude": exclude}


def membership(*, user_ids: Sequence[int]) -> dict[str, Any]:
    return {"type": MEMBERSHIP, "users": list(user_ids)}


def session_ended(*, session_keys: Sequence[str]) -> dict[str, Any]:
    return {"type": SESSION_ENDED, "sessions": list(session_keys)}
