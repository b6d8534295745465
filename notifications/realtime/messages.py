"""Channel-layer messages between services and the per-process hubs.

They are small dicts with a ``type``. An event travels as its pre-encoded live frame plus the
audience, so that a hub never encodes JSON or touches the database on the hot path.

An event message also carries ``committed_at`` (POSIX time), added by ``publish_raw`` when it
runs on commit, or from the row's ``created_at`` when the hub read the event from the database:
the start of ``notifications_delivery_latency_seconds`` (notifications/metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# All hubs (one per server process) listen on this group.
HUB_GROUP = "notifications.hubs"
# The prefix of every channel a server process receives on (the hub's, the health probe's).
# One prefix for all: channels_redis's list-based layer reads all of a process's channels with
# one blocking pop per prefix, so a second prefix would wait behind the hub's pop for ever.
PROCESS_CHANNEL_PREFIX = "notifications.hub."

EVENT = "notifications.event"
EVENTS = "notifications.events"
UNREAD = "notifications.unread"
MEMBERSHIP = "notifications.membership"
SESSION_ENDED = "notifications.session_ended"
PUSH = "notifications.push"
TOPIC_ACCESS = "notifications.topic_access"
# A pre-encoded frame for every connection of one user (inbox state, preferences).
USER_FRAME = "notifications.user_frame"


def event(
    *,
    event_id: int,
    frame: str | None,
    reach: str,
    users: Sequence[int],
    groups: Sequence[int],
    topic_id: int | None,
    permission_id: int | None = None,
    channel: str | None = None,
    expires: float | None = None,
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
        # The permission whose holders receive it (audiences.holds_permission), and the
        # POSIX time after which it is delivered to nobody (Event.expires_at).
        "permission": permission_id,
        "channel": channel,
        "expires": expires,
        # Each hub reports how many it delivered live (a broadcast's follow-up); optional.
        "track": track,
    }


def of_event(
    stored: Any, *, users: Sequence[int], groups: Sequence[int], track: bool = False
) -> dict[str, Any]:
    """The :func:`event` message of a stored ``Event`` (one place, for ``notify()`` and for
    the hub's database reads): its live frame encoded once, and its audience. ``track``: the
    hubs count its live deliveries (a broadcast's follow-up)."""
    from . import frames

    message = event(
        event_id=stored.id,
        frame=frames.encode(frames.notification(stored, read=False, replay=False)),
        reach=stored.reach,
        users=users,
        groups=groups,
        topic_id=stored.topic_id if stored.to_topic else None,
        permission_id=stored.permission_id,
        channel=stored.channel or None,
        expires=stored.expires_at.timestamp() if stored.expires_at is not None else None,
        track=track,
    )
    if stored.translations:
        # One encode per language the text differs in (notifications/i18n.py).
        message["translated"] = {
            code: frames.encode(
                frames.notification(stored, read=False, replay=False, language=code)
            )
            for code in stored.translations
        }
    return message


def events(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`event` messages in one (notify_many): one layer message per batch."""
    return {"type": EVENTS, "events": list(batch)}


def unread(*, user_id: int, count: int, exclude: str | None) -> dict[str, Any]:
    return {"type": UNREAD, "user": user_id, "count": count, "exclude": exclude}


def membership(*, user_ids: Sequence[int]) -> dict[str, Any]:
    return {"type": MEMBERSHIP, "users": list(user_ids)}


def session_ended(*, session_keys: Sequence[str]) -> dict[str, Any]:
    return {"type": SESSION_ENDED, "sessions": list(session_keys)}


def topic_access(*, topic_id: int, is_public: bool) -> dict[str, Any]:
    return {"type": TOPIC_ACCESS, "topic": topic_id, "public": is_public}


def push(
    *,
    frame: str,
    reach: str,
    users: Sequence[int],
    groups: Sequence[int],
    topic_id: int | None,
    permission_id: int | None,
    channel: str | None,
    exclude: str | None,
) -> dict[str, Any]:
    """A transient push: its frame encoded once, the same audience fields as :func:`event`
    (users always inline: there are no stored recipients to look up), and the socket id of
    the sender to leave out, if any. It has no id and takes no place in the stream."""
    return {
        "type": PUSH,
        "frame": frame,
        "reach": reach,
        "users": list(users),
        "groups": list(groups),
        "topic": topic_id,
        "permission": permission_id,
        "channel": channel,
        "exclude": exclude,
    }


def user_frame(*, user_id: int, frame: str, exclude: str | None, ext: str) -> dict[str, Any]:
    """``frame`` (encoded once) for every connection of ``user_id`` but ``exclude`` that
    asked for the protocol extension ``ext``."""
    return {"type": USER_FRAME, "user": user_id, "frame": frame, "exclude": exclude, "ext": ext}
