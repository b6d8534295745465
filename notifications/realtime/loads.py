"""The hub's database reads: blocking ORM work that the hub runs in threads.

The hub (hub.py) keeps ordering, indexes and fan-out, all async; everything here is called
through ``database_sync_to_async``: committed events as layer messages (the poll and gap
reads), replays, the membership changes the poll applies, and what the periodic session and
channel checks re-read (sessions, users' flags and auth hash, channel authorisations).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from .. import selectors
from ..audiences import Membership, membership_of
from ..compiled import CompiledQuery
from ..models import Broadcast, Recipient
from . import frames, messages

logger = logging.getLogger("notifications.realtime.hub")

# Seconds of membership changes each poll reads (a time window absorbs clock skew between
# machines and changes that commit late).
CHANGE_WINDOW = 60.0


def _load_event_messages(*, after: int, upto: int | None, limit: int = 500) -> list[dict]:
    """Layer-shaped messages for committed events read from the database."""
    events = selectors.committed_events(after=after, upto=upto, limit=limit)
    recipients: dict[int, list[int]] = defaultdict(list)
    for event_id, user_id in Recipient.objects.filter(
        event_id__in=[event.id for event in events]
    ).values_list("event_id", "user_id"):
        recipients[event_id].append(user_id)
    # Broadcasts' events count their live deliveries here too (no shared layer brought them).
    tracked = set(
        Broadcast.objects.filter(event_id__in=[event.id for event in events]).values_list(
            "event_id", flat=True
        )
    )
    return [
        {
            **_message_of(
                event,
                recipients.get(event.id, []),
                [group.pk for group in event.groups.all()],
                track=event.id in tracked,
            ),
            # No publish brought it: the row's creation stands in for its commit (metrics).
            "committed_at": event.created_at.timestamp(),
        }
        for event in events
    ]


def _message_of(event: Any, users: list[int], groups: list[int], *, track: bool = False) -> dict:
    try:
        return messages.of_event(event, users=users, groups=groups, track=track)
    except frames.Unencodable as exc:
        # A row stored before notify() checked its input, or written around it. It still
        # takes its place in the stream (the horizon passes it), but goes to nobody.
        logger.error("event %s cannot be sent and is skipped: %s", event.id, exc)
        return messages.event(
            event_id=event.id, frame=None, reach="", users=[], groups=[], topic_id=None
        )


def _load_poll(*, after: int, with_changes: bool) -> tuple[list[dict], list[tuple[int, int]]]:
    """Events above ``after``, then the recent membership changes. In that order: a change
    committed before an event that this read returns is committed before the second query
    starts, so it is seen, and applied before that event is fanned out."""
    rows = _load_event_messages(after=after, upto=None)
    changes = selectors.recent_membership_changes(seconds=CHANGE_WINDOW) if with_changes else []
    return rows, changes


def load_replay(
    user: Any,
    *,
    after: int,
    upto: int,
    limit: int,
    extra_topic_ids: Iterable[int] = (),
    topic_id: int | None = None,
    channels: Iterable[str] = (),
    channel: str | None = None,
    language: str | None = None,
) -> list[tuple[int, str, bool]]:
    """(id, encoded frame, is a notification) of the events :func:`selectors.replay`
    returns, oldest first, each marked ``replay`` and with the user's read state
    (:func:`_replay_frame`). ``channels`` are authorised again here, at replay
    (notifications.channels); ``channel``: only that channel's events."""
    from .. import channels as object_channels

    allowed = [name for name in channels if object_channels.may_follow(user, name)]
    events = selectors.replay(
        user,
        after=after,
        upto=upto,
        limit=limit,
        extra_topic_ids=extra_topic_ids,
        topic_id=topic_id,
        channels=allowed,
        channel=channel,
    )
    return [_replay_frame(event, language) for event in events]


@dataclass(frozen=True)
class ReplayRequest:
    """One socket's replay: :func:`load_replay`'s arguments."""

    user: Any
    after: int
    upto: int
    limit: int
    extra_topic_ids: tuple[int, ...] = ()
    topic_id: int | None = None
    channels: tuple[str, ...] = ()
    channel: str | None = None
    language: str | None = None


def load_replays(requests: list[ReplayRequest]) -> list[list[tuple[int, str, bool]] | Exception]:
    """:func:`load_replay` for each request: the replays that arrive together (every
    signed-in client resuming after a restart; ``realtime/batching.py``). The common case (a
    signed-in user resuming the whole stream) runs as one statement and one event query for
    all (``selectors.replays``), and each frame is encoded once per batch; topic and channel
    replays run one by one. A request's error is its own."""
    answers: list[list[tuple[int, str, bool]] | Exception | None] = [None] * len(requests)
    common = [
        i
        for i, r in enumerate(requests)
        if r.user.is_authenticated and r.topic_id is None and r.channel is None and not r.channels
    ]
    encoded: dict[tuple[int, bool, str | None], tuple[int, str, bool]] = {}
    if common:
        found = selectors.replays(
            [
                (
                    requests[i].user,
                    requests[i].after,
                    requests[i].upto,
                    requests[i].limit,
                    requests[i].extra_topic_ids,
                )
                for i in common
            ]
        )
        for i, events in zip(common, found, strict=True):
            language = requests[i].language
            frames_of_item = []
            for event, is_read in events:
                key = (event.id, is_read, language)
                if key not in encoded:
                    encoded[key] = _replay_frame(event, language, read=is_read)
                frames_of_item.append(encoded[key])
            answers[i] = frames_of_item
    for i, r in enumerate(requests):
        if answers[i] is not None:
            continue
        try:
            answers[i] = load_replay(
                r.user,
                after=r.after,
                upto=r.upto,
                limit=r.limit,
                extra_topic_ids=r.extra_topic_ids,
                topic_id=r.topic_id,
                channels=r.channels,
                channel=r.channel,
                language=r.language,
            )
        except Exception as exc:
            answers[i] = exc
    return [answer if answer is not None else [] for answer in answers]


def _replay_frame(
    event: Any, language: str | None = None, *, read: bool | None = None
) -> tuple[int, str, bool]:
    """(id, text, True) for a replayed ``notification``; (id, text of an ``error`` frame
    with the code ``unencodable``, False) for a stored row that cannot be encoded, which is
    skipped (logged) so that it never blocks anyone's resume. ``read``: the read flag, when
    the event does not carry it (``is_read``)."""
    try:
        return (
            event.id,
            frames.encode(
                frames.notification(
                    event,
                    read=event.is_read if read is None else read,
                    replay=True,
                    language=language,
                )
            ),
            True,
        )
    except frames.Unencodable as exc:
        logger.error("event %s cannot be replayed and is skipped: %s", event.id, exc)
        error = frames.error(
            "unencodable", f"notification {event.id} cannot be encoded and was skipped"
        )
        error["id"] = event.id
        return event.id, frames.encode(error), False


def _local_recipients(event_id: int, user_ids: list[int]) -> set[int]:
    return set(
        Recipient.objects.filter(event_id=event_id, user_id__in=user_ids).values_list(
            "user_id", flat=True
        )
    )


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    # SQLite caps the variables of one statement; keep IN lists short everywhere.
    for start in range(0, len(items), size):
        yield items[start : start + size]


# IN lists of the session check are padded to one of these lengths (repeating a value), so
# that a few compiled statements serve every slice.
_CHECK_SIZES = (1, 10, 100, 500)


def _padded(chunk: list[Any]) -> tuple[int, dict[str, Any]]:
    size = next(n for n in _CHECK_SIZES if n >= len(chunk))
    values = chunk + [chunk[0]] * (size - len(chunk))
    return size, {f"v{i}": value for i, value in enumerate(values)}


def _active_users_query(shape: tuple[int], **values: int) -> list[tuple]:
    ids = [values[f"v{i}"] for i in range(shape[0])]
    users = get_user_model()._default_manager
    return list(
        users.filter(pk__in=ids, is_active=True).values_list(
            "pk", "is_staff", "is_superuser", "password"
        )
    )


def _live_sessions_query(shape: tuple[int], *, now: Any, **values: str) -> list[str]:
    from django.contrib.sessions.models import Session

    keys = [values[f"v{i}"] for i in range(shape[0])]
    return list(
        Session.objects.filter(session_key__in=keys, expire_date__gt=now).values_list(
            "session_key", flat=True
        )
    )


# Compiled once per size: at 10,000 signed-in sockets the check looks up 5,000 users and
# sessions a second, and building the queries was most of its cost (docs/performance.md).
_ACTIVE_USERS = CompiledQuery(_active_users_query)
_LIVE_SESSIONS = CompiledQuery(_live_sessions_query)


@dataclass(frozen=True)
class UserState:
    """What grants a connected user access, as the database says now."""

    is_staff: bool
    is_superuser: bool
    auth_hash: str


def _session_states(
    pairs: list[tuple[str | None, int]],
) -> tuple[dict[int, UserState], set[str]]:
    """For (session key, user id) pairs: the state of each user that is still active
    (inactive and deleted users are left out), and which session keys still exist."""
    from importlib import import_module

    user_model = get_user_model()
    users: dict[int, UserState] = {}
    for chunk in _chunks(sorted({uid for _, uid in pairs})):
        size, values = _padded(chunk)
        for pk, is_staff, is_superuser, password in _ACTIVE_USERS.rows((size,), **values):
            # The hash Django keeps in the session (get_session_auth_hash): it changes with
            # the password, which must end the sockets of every other session.
            auth_hash = user_model(pk=pk, password=password).get_session_auth_hash()
            users[pk] = UserState(bool(is_staff), bool(is_superuser), auth_hash)
    keys = sorted({key for key, _ in pairs if key})
    engine = settings.SESSION_ENGINE
    if engine in (
        "django.contrib.sessions.backends.db",
        "django.contrib.sessions.backends.cached_db",
    ):
        live: set[str] = set()
        now = timezone.now()
        for chunk in _chunks(keys):
            size, values = _padded(chunk)
            live.update(row[0] for row in _LIVE_SESSIONS.rows((size,), now=now, **values))
    elif engine == "django.contrib.sessions.backends.signed_cookies":
        # The session lives in the browser's cookie: nothing on the server to look up, so
        # only deactivation, a password change and logout (its signal) can end such a socket.
        live = set(keys)
    else:
        store = import_module(engine).SessionStore
        live = {key for key in keys if store().exists(key)}
    return users, live


def _session_hash(session_key: str) -> str | None:
    """The auth hash stored in a session now (``update_session_auth_hash`` renews it in the
    session that changed the password, which stays signed in)."""
    from importlib import import_module

    from django.contrib.auth import HASH_SESSION_KEY

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return store.get(HASH_SESSION_KEY)


def _authorised_channels(pairs: list[tuple[int | None, str]]) -> set[tuple[int | None, str]]:
    """Which (user id, channel) pairs are still authorised (notifications.channels); None
    is an anonymous visitor. Inactive or deleted users are authorised for nothing."""
    from .. import channels

    ids = {uid for uid, _ in pairs if uid is not None}
    users = get_user_model()._default_manager.filter(is_active=True).in_bulk(ids)
    allowed = set()
    for uid, name in pairs:
        user = AnonymousUser() if uid is None else users.get(uid)
        if user is not None and channels.may_follow(user, name):
            allowed.add((uid, name))
    return allowed


def _memberships(user_ids: list[int]) -> dict[int, tuple[Membership, int | None]]:
    """Active users' memberships and unread counts (inactive users are left out)."""
    users = get_user_model()._default_manager.filter(pk__in=user_ids, is_active=True)
    return {user.pk: (membership_of(user), selectors.unread_count(user)) for user in users}
