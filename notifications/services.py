"""Writes: notify, push, subscribe, send a broadcast; a reader's own state (read, seen,
archived, preferences) is in reader_state.py and re-exported here.

Those two modules are the only ones that publish to the realtime path, and they always do so
through ``transaction.on_commit`` (``realtime.publish.publish_on_commit``): a rolled-back
transaction publishes nothing. ``grep on_commit`` finds every place that sends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from . import i18n, signals
from .audiences import Audience, may_read, resolve, users_of
from .conf import notifications_settings
from .models import (
    TITLE_MAX_LENGTH,
    Broadcast,
    Event,
    Level,
    MembershipChange,
    Reach,
    Recipient,
    Subscription,
    Topic,
)
from .reader_state import (  # noqa: F401 - re-exported: services.mark_read and the rest
    INBOX_EXTENSION,
    archive,
    mark_all_read,
    mark_read,
    mark_seen,
    mark_unread,
    preferences_frame,
    update_preferences,
)
from .realtime import frames, messages
from .realtime.publish import publish_on_commit
from .targets import target_reference
from .validation import check_json, check_text

logger = logging.getLogger(__name__)

# Key of the PostgreSQL advisory lock that orders event commits (see _lock_stream).
_STREAM_LOCK_KEY = 0x6E6F7469  # "noti"


def _lock_stream() -> None:
    """Make event ids commit in the order they are taken.

    Clients resume from the highest id they received, so an id must never become visible
    after a higher one (it would be skipped). SQLite already serialises writers; on
    PostgreSQL a transaction-scoped advisory lock does the same for event inserts only, and
    is released at commit or rollback. The cost: a transaction that calls notify() holds
    up other notify() calls until it ends, so keep such transactions short.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_STREAM_LOCK_KEY])


def validate_url(url: str) -> str:
    """Return ``url`` if a notification may link to it (relative or http(s), at most 500
    characters); raise ``ValueError`` otherwise."""
    return _validate_url(url)


def _validate_url(url: str) -> str:
    check_text(url, "url")
    if len(url) > 500:
        raise ValueError("url is longer than 500 characters")
    scheme = urlsplit(url).scheme.lower()
    if url and scheme not in ("", "http", "https"):
        # javascript: and data: links would run script when the toast is clicked.
        raise ValueError(f"url must be relative or http(s), not {scheme}:")
    return url


def _validate(title: Any, body: Any, level: Any, data: Any) -> dict[str, Any]:
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title is required and must be a non-empty string")
    check_text(title, "title")
    if len(title) > TITLE_MAX_LENGTH:
        raise ValueError(f"title is longer than {TITLE_MAX_LENGTH} characters")
    check_text(body, "body")
    if level not in Level.values:
        raise ValueError(f"level must be one of {', '.join(Level.values)}; got {level!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("data must be a dict")
    check_json(data, "data")
    return data


def _label_topic(topic: Topic | str | None, audience: Audience) -> Topic | None:
    if topic is None:
        return audience.topic
    label = Audience(topic=topic).topic
    if audience.topic is not None and label != audience.topic:
        raise ValueError("topic= differs from the topic given as recipients")
    return label


def _check_users_exist(user_ids: Iterable[int]) -> int:
    """Raise for ids of no user; return how many of them are active (one query)."""
    return sum(1 for active in _active_flags(set(user_ids)).values() if active)


def _recipient_count(audience: Audience, active_named: int) -> int:
    """Active users the audience reaches now; named users only: counted by the existence
    check already (the common case of a notification to a user or a few)."""
    named_only = audience == Audience(users=audience.users)
    return active_named if named_only else users_of(audience).count()


def _check_groups_exist(group_ids: Iterable[int]) -> None:
    ids = set(group_ids)
    if not ids:
        return
    missing = ids - set(Group.objects.filter(pk__in=ids).values_list("pk", flat=True))
    if missing:
        raise ValueError(f"no group with id {', '.join(map(str, sorted(missing)))}")


@dataclass(frozen=True)
class Notification:
    """One notification for :func:`notify_many`: :func:`notify`'s arguments."""

    recipients: Any
    title: str
    body: str = ""
    url: str = ""
    level: str = "info"
    topic: Topic | str | None = None
    data: dict[str, Any] | None = None
    actor: AbstractBaseUser | None = None
    idempotency_key: str | None = None
    expires_at: datetime | None = None
    group_key: str | None = None
    target: Model | None = None


def _checked(item: Notification) -> tuple[Audience, Topic | None, dict[str, Any], str]:
    """Validate one notification's arguments (``ValueError``): its audience, topic label,
    data and url. The users' and groups' existence is checked by the caller, in bulk."""
    audience = resolve(item.recipients)
    data = _validate(item.title, item.body, item.level, item.data)
    url = _validate_url(item.url)
    label = _label_topic(item.topic, audience)
    key = item.idempotency_key
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise ValueError("idempotency_key must be a string of 1 to 200 characters")
    if key is not None:
        check_text(key, "idempotency_key")
    expires_at = item.expires_at
    if expires_at is not None and (
        not isinstance(expires_at, datetime) or timezone.is_naive(expires_at)
    ):
        raise ValueError("expires_at must be an aware datetime")
    group_key = item.group_key
    if group_key is not None:
        if not isinstance(group_key, str) or not 0 < len(group_key) <= 200:
            raise ValueError("group_key must be a string of 1 to 200 characters")
        check_text(group_key, "group_key")
    return audience, label, data, url


def notify(
    recipients: Any,
    title: str,
    *,
    body: str = "",
    url: str = "",
    level: str = "info",
    topic: Topic | str | None = None,
    data: dict[str, Any] | None = None,
    actor: AbstractBaseUser | None = None,
    idempotency_key: str | None = None,
    expires_at: datetime | None = None,
    group_key: str | None = None,
    target: Model | None = None,
    track_delivery: bool = False,
) -> Event:
    """Store a notification for ``recipients`` and publish it when the transaction commits.

    ``recipients``: a user, an iterable or QuerySet of users, a Group, a Topic or its slug,
    ``"everyone"`` (anonymous visitors included) or an :class:`~notifications.Audience`.
    Returns the stored event (``id``, ``recipient_count``). The same ``idempotency_key``
    within ``IDEMPOTENCY_WINDOW`` returns the first event and sends nothing. After
    ``expires_at`` the event is no longer delivered, replayed or counted as unread.
    ``target``: a saved model instance the notification is about (``event.target``,
    ``selectors.notifications_about(obj)``, ``target`` in the frame). Events with the same
    ``group_key`` collapse into one row of the feed ("Ann and 2 others"). ``title`` and
    ``body`` may be lazy translation strings: each recipient then gets them in their own
    language (notifications/i18n.py). With ``track_delivery`` every server process reports
    how many it delivered live (used by broadcasts, see broadcasting.record_live_delivery).
    Raises ``ValueError`` for bad arguments; nothing is
    stored then.
    """
    item = Notification(
        recipients,
        title,
        body=body,
        url=url,
        level=level,
        topic=topic,
        data=data,
        actor=actor,
        idempotency_key=idempotency_key,
        expires_at=expires_at,
        group_key=group_key,
        target=target,
    )
    return _store([item], track_delivery=track_delivery, batch=False)[0]


# Events per layer message of notify_many(): one group_send carries this many.
BATCH_MESSAGE_EVENTS = 200


def notify_many(items: Iterable[Notification], *, track_delivery: bool = False) -> list[Event]:
    """Store many notifications in one transaction and publish them when it commits: the
    batch form of :func:`notify`, for imports, digests and fan-in from other systems.

    Each item takes :func:`notify`'s arguments and gets its guarantees; the events are stored
    with a few bulk inserts and published in a few layer messages (``BATCH_MESSAGE_EVENTS``
    events each), in id order. Returns the events in the order of ``items`` (for a repeated
    ``idempotency_key``, the first event, not sent again). ``ValueError`` for any bad item,
    its message prefixed with ``notifications[i]``; nothing is stored then.
    """
    return _store(list(items), track_delivery=track_delivery, batch=True)


def _store(items: list[Notification], *, track_delivery: bool, batch: bool) -> list[Event]:
    """Validate, store and publish on commit: :func:`notify` (one item, ``batch`` off: plain
    error messages, one ``notifications.event`` message) and :func:`notify_many`."""
    checked = []
    translations: list[dict[str, dict[str, str]]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Notification):
            raise ValueError(f"notifications[{index}] is not a Notification")
        title, body, texts = i18n.render(item.title, item.body)
        items[index] = item = replace(item, title=title, body=body)
        translations.append(texts)
        try:
            checked.append(_checked(item))
        except ValueError as exc:
            if not batch:
                raise
            raise ValueError(f"notifications[{index}]: {exc}") from None
    keys = [item.idempotency_key for item in items if item.idempotency_key is not None]
    if len(keys) != len(set(keys)):
        raise ValueError("an idempotency_key appears twice in the batch")
    user_ids = {uid for audience, *_ in checked for uid in audience.users}
    active = _active_flags(user_ids)
    _check_groups_exist({gid for audience, *_ in checked for gid in audience.groups})

    with transaction.atomic():
        _lock_stream()
        previous = _previous_events(keys)
        new: list[tuple[int, Event, Audience]] = []
        results: list[Event | None] = []
        for index, (item, (audience, label, data, url)) in enumerate(
            zip(items, checked, strict=True)
        ):
            if item.idempotency_key in previous:
                event = previous[item.idempotency_key]
                event.repeated = True
                results.append(event)
                continue
            named = sum(1 for uid in audience.users if active[uid])
            target_type, target_id = (
                target_reference(item.target) if item.target is not None else (None, "")
            )
            event = Event(
                title=item.title,
                body=item.body,
                url=url,
                level=item.level,
                topic=label,
                data=data,
                actor=item.actor,
                reach=audience.reach,
                to_topic=audience.topic is not None,
                permission_id=audience.permission,
                channel=audience.channel or "",
                expires_at=item.expires_at,
                recipient_count=_recipient_count(audience, named),
                idempotency_key=item.idempotency_key,
                group_key=item.group_key or "",
                translations=translations[index],
                target_content_type=target_type,
                target_object_id=target_id,
            )
            event.repeated = False
            new.append((index, event, audience))
            results.append(None)
        Event.objects.bulk_create([event for _, event, _ in new], batch_size=1000)
        Event.groups.through.objects.bulk_create(
            [
                Event.groups.through(event_id=event.id, group_id=gid)
                for _, event, audience in new
                for gid in audience.groups
            ],
            batch_size=1000,
        )
        Recipient.objects.bulk_create(
            [
                Recipient(event_id=event.id, user_id=uid)
                for _, event, audience in new
                for uid in audience.users
            ],
            batch_size=1000,
        )
        publish = [
            messages.of_event(
                event, users=audience.users, groups=audience.groups, track=track_delivery
            )
            for _, event, audience in sorted(new, key=lambda entry: entry[1].id)
        ]
        if not batch:
            for message in publish:
                publish_on_commit(message)
        for start in range(0, len(publish) if batch else 0, BATCH_MESSAGE_EVENTS):
            publish_on_commit(messages.events(publish[start : start + BATCH_MESSAGE_EVENTS]))
        for index, event, _ in new:
            results[index] = event
            transaction.on_commit(
                partial(signals.notification_sent.send, sender=Event, event=event), robust=True
            )
    return [event for event in results if event is not None]


def _active_flags(user_ids: set[int]) -> dict[int, bool]:
    """``{user id: is_active}`` in one query; ``ValueError`` for ids of no user."""
    found = dict(
        get_user_model()._default_manager.filter(pk__in=user_ids).values_list("pk", "is_active")
    )
    missing = user_ids - set(found)
    if missing:
        raise ValueError(f"no user with id {', '.join(map(str, sorted(missing)))}")
    return found


def _previous_events(keys: list[str]) -> dict[str, Event]:
    """Events already stored under these idempotency keys within the window; keys whose
    event is older are released for reuse. Call inside the stream lock."""
    if not keys:
        return {}
    window = timezone.now() - timedelta(seconds=notifications_settings.IDEMPOTENCY_WINDOW)
    found: dict[str, Event] = {}
    expired = []
    for event in Event.objects.filter(idempotency_key__in=keys):
        if event.created_at >= window:
            found[event.idempotency_key] = event
        else:
            expired.append(event.pk)
    if expired:
        Event.objects.filter(pk__in=expired).update(idempotency_key=None)
    return found


async def anotify(recipients: Any, title: str, **kwargs: Any) -> Event:
    """:func:`notify` for async code; the same arguments, guarantees and errors."""
    return await sync_to_async(notify)(recipients, title, **kwargs)


PUSH_EVENT_RE = re.compile(r"[-a-zA-Z0-9_.:]{1,100}\Z")


def push(
    recipients: Any,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    exclude: str | None = None,
) -> None:
    """Send a transient ``push`` frame (``{"type": "push", "event": ..., "data": ...}``) to the
    sockets of ``recipients`` that are open now: progress, live counters, "someone is editing".

    Nothing is stored, replayed or counted as unread. The audience is resolved as
    :func:`notify`'s (the same rule), the frame encoded once and fanned out by every hub.
    ``exclude`` is a socket id (``hello.socket``) to leave out: the sender's own tab. Sent when
    the current transaction commits (at once outside one). ``ValueError`` for bad arguments.
    """
    audience = resolve(recipients)
    if not isinstance(event, str) or not PUSH_EVENT_RE.match(event):
        raise ValueError("event must be 1 to 100 characters of letters, digits, - _ . :")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("data must be a dict")
    check_json(data, "data")
    if exclude is not None:
        check_text(exclude, "exclude")
    if audience.users:
        _check_users_exist(audience.users)
    if audience.groups:
        _check_groups_exist(audience.groups)
    frame = frames.encode({"type": "push", "event": event, "data": data})
    if len(frame) > notifications_settings.MAX_PUSH_BYTES:
        raise ValueError(f"the push frame is over {notifications_settings.MAX_PUSH_BYTES} bytes")
    publish_on_commit(
        messages.push(
            frame=frame,
            reach=audience.reach,
            users=audience.users,
            groups=audience.groups,
            topic_id=audience.topic.pk if audience.topic is not None else None,
            permission_id=audience.permission,
            channel=audience.channel,
            exclude=exclude,
        )
    )


async def apush(
    recipients: Any, event: str, data: dict[str, Any] | None = None, **kwargs: Any
) -> None:
    """:func:`push` for async code."""
    await sync_to_async(push)(recipients, event, data, **kwargs)


class TopicError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def may_follow(user: AbstractBaseUser | AnonymousUser, topic: Topic) -> bool:
    """Whether ``user`` may follow ``topic`` now (audiences.may_read: from grants only)."""
    return may_read(user, topic)


def find_topic(user: AbstractBaseUser | AnonymousUser, slug: str) -> Topic:
    """The topic ``user`` may follow, or :class:`TopicError` (``not_found``/``forbidden``)."""
    topic = Topic.objects.filter(slug=slug).first()
    if topic is None:
        raise TopicError("not_found", f"no topic {slug!r}")
    if not may_follow(user, topic):
        raise TopicError("forbidden", f"topic {slug!r} is private")
    return topic


def subscribe(user: AbstractBaseUser | AnonymousUser, slug: str) -> Topic:
    """Follow a topic. Stored for a signed-in user; the caller keeps it for anonymous ones."""
    topic = find_topic(user, slug)
    if user.is_authenticated:
        Subscription.objects.get_or_create(user=user, topic=topic)
    return topic


def unsubscribe(user: AbstractBaseUser | AnonymousUser, slug: str) -> Topic:
    """Stop following a topic; idempotent. What staff granted (the topic's groups and
    members) stays: :func:`audiences.follows` tells whether the user still follows it."""
    topic = Topic.objects.filter(slug=slug).first()
    if topic is None:
        raise TopicError("not_found", f"no topic {slug!r}")
    if user.is_authenticated:
        Subscription.objects.filter(user=user, topic=topic).delete()
    return topic


def membership_changed(user_ids: Iterable[int]) -> None:
    """Tell every server process to reload these users' groups, topics and staff flag."""
    ids = sorted(set(user_ids))
    if ids:
        MembershipChange.objects.bulk_create([MembershipChange(user_id=uid) for uid in ids])
        publish_on_commit(messages.membership(user_ids=ids))


def topic_access_changed(topic: Topic) -> None:
    """A topic's settings changed (public or private): reload its signed-in followers, and
    let hubs drop it from anonymous sockets once it is private."""
    followers = Subscription.objects.filter(topic=topic).values_list("user_id", flat=True)
    membership_changed(list(followers))
    publish_on_commit(messages.topic_access(topic_id=topic.pk, is_public=topic.is_public))


def end_sessions(session_keys: Iterable[str]) -> None:
    """Close sockets authenticated by these sessions (logout) on every server process."""
    keys = sorted(set(session_keys))
    if keys:
        publish_on_commit(messages.session_ended(session_keys=keys))


BROADCAST_REACH = {
    Broadcast.Audience.EVERYONE: Reach.EVERYONE,
    Broadcast.Audience.AUTHENTICATED: Reach.AUTHENTICATED,
    Broadcast.Audience.STAFF: Reach.STAFF,
}


def broadcast_audience(broadcast: Broadcast) -> Audience:
    """The :class:`Audience` a staff broadcast targets; ``ValueError`` if it names nobody."""
    kind = broadcast.audience
    if kind in BROADCAST_REACH:
        return Audience(reach=BROADCAST_REACH[kind])
    if kind == Broadcast.Audience.GROUPS:
        audience = Audience(groups=broadcast.groups.all())
    elif kind == Broadcast.Audience.USERS:
        # Ids, not user objects: a broadcast may name 100,000 users.
        audience = Audience(users=broadcast.users.values_list("pk", flat=True))
    elif kind == Broadcast.Audience.TOPIC:
        if broadcast.topic is None:
            raise ValueError("choose a topic")
        audience = Audience(topic=broadcast.topic)
    elif kind == Broadcast.Audience.PERMISSION:
        if broadcast.permission_id is None:
            raise ValueError("choose a permission")
        audience = Audience(permission=broadcast.permission)
    else:
        raise ValueError(f"unknown audience {kind!r}")
    if audience.is_empty:
        raise ValueError(f"choose at least one of the {kind}")
    return audience


SEND_BROADCAST_PERMISSION = "notifications.send_broadcast"


def check_may_send(user: AbstractBaseUser | AnonymousUser | None) -> None:
    """Raise ``PermissionDenied`` unless ``user`` may send broadcasts (an active user with
    ``notifications.send_broadcast``; superusers have every permission)."""
    if user is None or not user.is_active or not user.has_perm(SEND_BROADCAST_PERMISSION):
        raise PermissionDenied(
            f"sending a broadcast needs the permission {SEND_BROADCAST_PERMISSION}"
        )


def send_broadcast(broadcast: Broadcast, *, by: AbstractBaseUser | None) -> Event:
    """Send a staff broadcast once on behalf of ``by``.

    Raises ``PermissionDenied`` unless ``by`` has ``notifications.send_broadcast`` (every path
    that sends goes through here: the admin form and actions, scheduled sends), ``ValueError``
    if it was already sent or names nobody.
    """
    check_may_send(by)
    with transaction.atomic():
        locked = Broadcast.objects.select_for_update().get(pk=broadcast.pk)
        if locked.sent_at is not None:
            raise ValueError("this broadcast was already sent")
        event = notify(
            broadcast_audience(locked),
            locked.title,
            body=locked.body,
            url=locked.url,
            level=locked.level,
            actor=by,
            expires_at=locked.expires_at,
            track_delivery=True,
        )
        Broadcast.objects.filter(pk=locked.pk).update(
            sent_at=timezone.now(),
            sent_by=by,
            event=event,
            status=Broadcast.Status.SENT,
            failure_reason="",
        )
    broadcast.refresh_from_db()
    return event
