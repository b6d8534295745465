"""Writes of a reader's own state: read and unread, seen, archived, preferences.

Each of them changes only the signed-in user's rows and tells that user's other connections
on commit (``unread`` frames, and the ``?ext=inbox`` frames of docs/client.md), through
``realtime.publish.publish_on_commit`` as every write of services.py does. ``services``
re-exports these functions: ``services.mark_read`` and the rest keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from . import i18n, signals
from .audiences import may_read, visible_to
from .models import ArchiveMark, Event, FeedState, InboxState, Level, Preferences, ReadMark, Topic
from .realtime import frames, messages
from .realtime.publish import publish_on_commit
from .selectors import stream_cursor, unread_count


def _publish_unread(user: AbstractBaseUser, count: int, *, exclude: str | None) -> None:
    publish_on_commit(messages.unread(user_id=user.pk, count=count, exclude=exclude))


# The protocol extension a client names on connect (``?ext=inbox``) to get inbox-state frames.
INBOX_EXTENSION = "inbox"


def _publish_to_user(
    user: AbstractBaseUser, frame: dict[str, Any], *, exclude: str | None = None
) -> None:
    """On commit, ``frame`` (encoded here, once) to every connection of ``user`` in every
    process (the inbox-state extension of PROTOCOL.md, docs/client.md)."""
    publish_on_commit(
        messages.user_frame(
            user_id=user.pk, frame=frames.encode(frame), exclude=exclude, ext=INBOX_EXTENSION
        )
    )


def mark_read(user: AbstractBaseUser, ids: Iterable[int], *, origin: str | None = None) -> int:
    """Mark those of ``ids`` that ``user`` may see as read; return the new unread count.

    Ids of events that are not the user's are ignored. Every other connection of the user
    gets an ``unread`` frame (``origin`` names the connection that asked, which answers itself).
    """
    if not user.is_authenticated:
        raise PermissionError("anonymous visitors have no inbox")
    # Ids beyond a 64-bit integer name no event (and would overflow the database driver).
    ids = [pk for pk in ids if 0 < pk <= frames.MAX_ID]
    with transaction.atomic():
        state = InboxState.objects.filter(user=user).first()
        watermark = state.read_through if state else 0
        readable = set(
            Event.objects.filter(visible_to(user), id__in=ids, id__gt=watermark).values_list(
                "pk", flat=True
            )
        )
        already = set(
            ReadMark.objects.filter(user=user, event_id__in=readable).values_list(
                "event_id", flat=True
            )
        )
        event_ids = sorted(readable - already)
        ReadMark.objects.bulk_create(
            [ReadMark(user=user, event_id=pk) for pk in event_ids], ignore_conflicts=True
        )
        count = unread_count(user)
        if readable:
            _publish_to_user(user, {"type": "read_state", "ids": sorted(readable), "read": True})
        _publish_unread(user, count, exclude=origin)
        if event_ids:
            transaction.on_commit(
                partial(signals.notification_read.send, sender=Event, user=user, ids=event_ids),
                robust=True,
            )
    return count


def mark_all_read(user: AbstractBaseUser, *, origin: str | None = None) -> int:
    """Mark everything the user can see now as read; return the new unread count (0)."""
    if not user.is_authenticated:
        raise PermissionError("anonymous visitors have no inbox")
    with transaction.atomic():
        top = stream_cursor()
        InboxState.objects.update_or_create(
            user=user, defaults={"read_through": top, "read_through_at": timezone.now()}
        )
        ReadMark.objects.filter(user=user, event_id__lte=top).delete()
        count = unread_count(user)
        _publish_to_user(user, {"type": "read_state", "read": True, "through": top})
        _publish_unread(user, count, exclude=origin)
        transaction.on_commit(
            partial(signals.notification_read.send, sender=Event, user=user, ids=None),
            robust=True,
        )
    return count


# Inbox state beyond read marks: unread again, seen, archived; preferences ------------------


def _require_inbox(user: AbstractBaseUser | AnonymousUser) -> None:
    if not user.is_authenticated:
        raise PermissionError("anonymous visitors have no inbox")


def _visible_ids(user: AbstractBaseUser, ids: Iterable[int]) -> list[int]:
    """Those of ``ids`` that name events ``user`` may see (the audience rule), sorted."""
    wanted = {pk for pk in ids if 0 < pk <= frames.MAX_ID}
    if not wanted:
        return []
    return sorted(
        Event.objects.filter(visible_to(user), id__in=wanted).values_list("pk", flat=True)
    )


def mark_unread(user: AbstractBaseUser, ids: Iterable[int], *, origin: str | None = None) -> int:
    """Mark those of ``ids`` that ``user`` may see as unread; return the new unread count.

    Above the read watermark this deletes the read marks. For events at or below it, the
    watermark moves down to just below the oldest of them and every other event the user may
    see in between gets a read mark: read state stays "watermark plus sparse marks", so every
    query that counts unread keeps working unchanged. The cost is one row per event between
    the oldest event marked unread and the old watermark (``mark_all_read`` folds them again).
    """
    _require_inbox(user)
    with transaction.atomic():
        event_ids = _visible_ids(user, ids)
        state = InboxState.objects.select_for_update().filter(user=user).first()
        watermark = state.read_through if state else 0
        ReadMark.objects.filter(user=user, event_id__in=event_ids).delete()
        below = [pk for pk in event_ids if pk <= watermark]
        if below:
            assert state is not None
            low = below[0]
            still_read = (
                Event.objects.filter(visible_to(user), id__gt=low, id__lte=watermark)
                .exclude(id__in=below)
                .values_list("pk", flat=True)
            )
            ReadMark.objects.bulk_create(
                [ReadMark(user=user, event_id=pk) for pk in still_read],
                batch_size=1000,
                ignore_conflicts=True,
            )
            InboxState.objects.filter(user=user).update(read_through=low - 1)
        count = unread_count(user)
        if event_ids:
            _publish_to_user(user, {"type": "read_state", "ids": event_ids, "read": False})
        _publish_unread(user, count, exclude=origin)
    return count


def mark_seen(user: AbstractBaseUser, *, through: int | None = None) -> int:
    """The user has seen the feed up to ``through`` (default: the newest event now); return
    the seen watermark. It never moves back; every connection of the user gets ``seen``."""
    _require_inbox(user)
    top = stream_cursor()
    through = top if through is None else max(0, min(through, top))
    with transaction.atomic():
        state, _ = FeedState.objects.select_for_update().get_or_create(user=user)
        if through > state.seen_through:
            state.seen_through = through
            state.seen_at = timezone.now()
            state.save(update_fields=["seen_through", "seen_at"])
            _publish_to_user(user, {"type": "seen", "through": through})
    return state.seen_through


def archive(
    user: AbstractBaseUser, ids: Iterable[int], *, archived: bool = True, origin: str | None = None
) -> list[int]:
    """Archive (or, with ``archived=False``, restore) those of ``ids`` that ``user`` may see;
    return their ids. Archiving also marks them read: an unread row the feed no longer shows
    would hold the badge up for good. Every connection of the user gets ``archived``."""
    _require_inbox(user)
    with transaction.atomic():
        event_ids = _visible_ids(user, ids)
        if archived:
            ArchiveMark.objects.bulk_create(
                [ArchiveMark(user=user, event_id=pk) for pk in event_ids], ignore_conflicts=True
            )
        else:
            ArchiveMark.objects.filter(user=user, event_id__in=event_ids).delete()
        if event_ids:
            _publish_to_user(user, {"type": "archived", "ids": event_ids, "archived": archived})
            if archived:
                mark_read(user, event_ids, origin=origin)
    return event_ids


def preferences_frame(prefs: Preferences) -> dict[str, Any]:
    """The ``preferences`` frame (and JSON API answer) for stored preferences."""
    return {
        "type": "preferences",
        "language": prefs.language,
        "muted_topics": sorted(prefs.muted_topics.values_list("slug", flat=True)),
        "toast_levels": [level for level in Level.values if level in prefs.toast_levels],
        "desktop_levels": [level for level in Level.values if level in prefs.desktop_levels],
    }


def _levels(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: must be a list of levels")
    unknown = sorted(set(value) - set(Level.values))
    if unknown:
        raise ValueError(f"{field}: unknown level {unknown[0]!r}")
    return [level for level in Level.values if level in value]


def update_preferences(
    user: AbstractBaseUser,
    *,
    muted_topics: Iterable[str] | None = None,
    toast_levels: list[str] | None = None,
    desktop_levels: list[str] | None = None,
    language: str | None = None,
) -> Preferences:
    """Store what is given (None leaves a part as it is) and push ``preferences`` to every
    connection of the user. Only topics the user follows (directly or through a group) or may
    read as public can be muted; ``ValueError`` names the first bad value."""
    _require_inbox(user)
    topics = None
    if muted_topics is not None:
        slugs = list(muted_topics)
        if not all(isinstance(slug, str) for slug in slugs) or len(slugs) > 500:
            raise ValueError("muted_topics: must be a list of topic slugs")
        topics = list(Topic.objects.filter(slug__in=slugs))
        found = {topic.slug for topic in topics}
        missing = sorted(set(slugs) - found)
        if missing:
            raise ValueError(f"muted_topics: no topic {missing[0]!r}")
        for topic in topics:
            if not may_read(user, topic):
                raise ValueError(f"muted_topics: no topic {topic.slug!r}")
    if language is not None and language != "" and language not in i18n.languages():
        raise ValueError(f"language: not one of the site's languages: {str(language)[:20]!r}")
    toast = _levels(toast_levels, "toast_levels") if toast_levels is not None else None
    desktop = _levels(desktop_levels, "desktop_levels") if desktop_levels is not None else None
    with transaction.atomic():
        prefs, _ = Preferences.objects.select_for_update().get_or_create(user=user)
        if toast is not None:
            prefs.toast_levels = toast
        if desktop is not None:
            prefs.desktop_levels = desktop
        if language is not None:
            prefs.language = language
        prefs.updated_at = timezone.now()
        prefs.save()
        if topics is not None:
            prefs.muted_topics.set(topics)
        _publish_to_user(user, preferences_frame(prefs))
    return prefs
