"""Reads: the inbox, unread counts, the stream cursor and replay. Blocking ORM calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.paginator import Page, Paginator
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from .audiences import visible_to
from .compiled import CompiledQuery
from .models import Event, InboxState, Reach, ReadMark

AnyUser = AbstractBaseUser | AnonymousUser


def stream_cursor() -> int:
    """The newest committed event id (0 when there is none): where a fresh page starts."""
    return Event.objects.aggregate(top=Max("id"))["top"] or 0


def stream_heads() -> tuple[int, int]:
    """The newest committed event id, and the newest one sent to everyone (0 when none)."""
    heads = Event.objects.aggregate(top=Max("id"), public=Max("id", filter=Q(reach=Reach.EVERYONE)))
    return heads["top"] or 0, heads["public"] or 0


def recent_membership_changes(*, seconds: float) -> list[tuple[int, int]]:
    """(change id, user id) of the membership changes of the last ``seconds``."""
    from .models import MembershipChange

    since = timezone.now() - timedelta(seconds=seconds)
    return list(MembershipChange.objects.filter(created_at__gte=since).values_list("id", "user_id"))


def prune_membership_changes(*, older_than: float) -> None:
    from .models import MembershipChange

    MembershipChange.objects.filter(
        created_at__lt=timezone.now() - timedelta(seconds=older_than)
    ).delete()


def read_through(user: AnyUser) -> int:
    if not user.is_authenticated:
        return 0
    state = InboxState.objects.filter(user=user).values_list("read_through", flat=True).first()
    return state or 0


def _with_read_flag(events: QuerySet, user: AnyUser) -> QuerySet:
    if not user.is_authenticated:
        return events.annotate(is_read=ExpressionWrapper(Q(pk__in=[]), BooleanField()))
    watermark = read_through(user)
    return events.annotate(
        is_read=ExpressionWrapper(
            Q(id__lte=watermark) | Exists(ReadMark.objects.filter(user=user, event=OuterRef("pk"))),
            output_field=BooleanField(),
        )
    )


def visible_events(
    user: AnyUser, *, extra_topic_ids: Iterable[int] = (), channels: Iterable[str] = ()
) -> QuerySet:
    """Events ``user`` may see, newest first (``channels``: object channels the caller has
    authorised for this read)."""
    return Event.objects.filter(
        visible_to(user, extra_topic_ids=extra_topic_ids, channels=channels)
    ).select_related("topic")


def unread_count(user: AnyUser, *, upto: int | None = None) -> int | None:
    """Unread events of a signed-in user (None for anonymous), optionally up to an id."""
    if not user.is_authenticated:
        return None
    events = Event.objects.filter(visible_to(user), id__gt=read_through(user))
    if upto is not None:
        events = events.filter(id__lte=upto)
    return events.exclude(Exists(ReadMark.objects.filter(user=user, event=OuterRef("pk")))).count()


@dataclass(frozen=True)
class Greeting:
    cursor: int
    unread: int | None


def greeting(
    user: AnyUser, *, upto: int, counted_to: int, extra_topic_ids: Iterable[int] = ()
) -> Greeting:
    """What ``hello`` says: the newest event id the socket may see (up to ``upto``, 0 if
    none) and the unread count up to ``counted_to`` (None for anonymous visitors).

    Signed-in: one statement, compiled once per shape (:mod:`notifications.compiled`); building
    the audience filter costs more than running it, and every signed-in handshake waits for
    this. :func:`greeting_orm` is the same query through the ORM, kept as its definition."""
    if not user.is_authenticated:
        return greeting_orm(user, upto=upto, counted_to=counted_to, extra_topic_ids=extra_topic_ids)
    shape, values = _greeting_values(user, upto, counted_to, extra_topic_ids)
    return _greeting_of(_GREETING.row(shape, **values))


def greetings(requests: Sequence[GreetingRequest]) -> list[Greeting]:
    """:func:`greeting` for each ``(user, upto, counted_to, extra_topic_ids)``: the
    handshakes that arrive together (``realtime/batching.py``). On PostgreSQL the signed-in
    ones of one shape share one statement (``CompiledQuery.rows_each``)."""
    answers: list[Greeting | None] = [None] * len(requests)
    by_shape: dict[tuple, list[tuple[int, dict]]] = {}
    for i, (user, upto, counted_to, extra) in enumerate(requests):
        if user.is_authenticated:
            shape, values = _greeting_values(user, upto, counted_to, extra)
            by_shape.setdefault(shape, []).append((i, values))
        else:
            answers[i] = greeting(user, upto=upto, counted_to=counted_to, extra_topic_ids=extra)
    for shape, items in by_shape.items():
        rows = _GREETING.rows_each(shape, [values for _, values in items])
        for (i, _), found in zip(items, rows, strict=True):
            answers[i] = _greeting_of(found[0] if found else None)
    return [answer for answer in answers if answer is not None]


GreetingRequest = tuple[AnyUser, int, int, Iterable[int]]


def _greeting_values(
    user: Any, upto: int, counted_to: int, extra_topic_ids: Iterable[int]
) -> tuple[tuple, dict[str, Any]]:
    topic_count, values = _described(user, extra_topic_ids)
    values.update(upto=upto, counted_to=counted_to, ceiling=max(upto, counted_to))
    return (bool(user.is_staff), topic_count), values


def _described(user: Any, extra_topic_ids: Iterable[int]) -> tuple[int, dict[str, Any]]:
    """A signed-in user as the compiled statements take one: values alone (``user_id``,
    ``joined``, ``now``, ``topic0``...), and how many extra topics there are (a shape)."""
    topics = sorted(set(extra_topic_ids))
    values = {
        "user_id": user.pk,
        "joined": user.date_joined,
        "now": timezone.now(),
        **{f"topic{i}": topic_id for i, topic_id in enumerate(topics)},
    }
    return len(topics), values


def _stand_in(user_id: int, joined: datetime, is_staff: bool) -> Any:
    """A user object built from :func:`_described` values, for ``visible_to``."""
    user = get_user_model()(pk=user_id, date_joined=joined, is_staff=is_staff)
    user._state.adding = False
    return user


def _watermark(user_id: int) -> Coalesce:
    """The user's "read through" id (``InboxState``), 0 without one, as a subquery."""
    return Coalesce(
        Subquery(InboxState.objects.filter(user_id=user_id).values("read_through")[:1]), 0
    )


def _greeting_of(row: tuple | None) -> Greeting:
    top, unread = row if row is not None else (None, 0)
    return Greeting(cursor=top or 0, unread=unread or 0)


def greeting_orm(
    user: AnyUser, *, upto: int, counted_to: int, extra_topic_ids: Iterable[int] = ()
) -> Greeting:
    """:func:`greeting` through the ORM, built on every call."""
    visible = Event.objects.filter(visible_to(user, extra_topic_ids=extra_topic_ids))
    if not user.is_authenticated:
        newest = visible.filter(id__lte=upto).aggregate(top=Max("id"))["top"]
        return Greeting(cursor=newest or 0, unread=None)
    row = _signed_in_greeting(
        visible,
        user_id=user.pk,
        upto=upto,
        counted_to=counted_to,
        ceiling=max(upto, counted_to),
    )
    return Greeting(cursor=row["top"] or 0, unread=row["unread"])


def _signed_in_greeting(
    visible: QuerySet, *, user_id: int, upto: int, counted_to: int, ceiling: int
) -> dict:
    unread = Q(id__gt=_watermark(user_id), id__lte=counted_to) & ~Exists(
        ReadMark.objects.filter(user_id=user_id, event=OuterRef("pk"))
    )
    return visible.filter(id__lte=ceiling).aggregate(
        top=Max("id", filter=Q(id__lte=upto)), unread=Count("id", filter=unread)
    )


def _build_signed_in_greeting(
    shape: tuple[bool, int], *, user_id: int, joined: datetime, now: datetime, **values: int
) -> dict:
    """:func:`_signed_in_greeting` for a user described by values alone (what CompiledQuery
    swaps); ``shape`` is (is_staff, number of extra topics ``topic0``, ``topic1``...)."""
    is_staff, topic_count = shape
    user = _stand_in(user_id, joined, is_staff)
    topics = [values.pop(f"topic{i}") for i in range(topic_count)]
    visible = Event.objects.filter(visible_to(user, extra_topic_ids=topics, now=now))
    return _signed_in_greeting(visible, user_id=user_id, **values)


_GREETING = CompiledQuery(_build_signed_in_greeting)


@dataclass(frozen=True)
class InboxPage:
    page: Page
    unread: int | None


def inbox_page(user: AnyUser, *, page: int | str = 1, per_page: int = 20) -> InboxPage:
    """One page of a user's inbox, newest first, each event annotated with ``is_read``."""
    events = _with_read_flag(visible_events(user), user).order_by("-id")
    paginator = Paginator(events, per_page)
    return InboxPage(page=paginator.get_page(page), unread=unread_count(user))


def replay(
    user: AnyUser,
    *,
    after: int,
    upto: int,
    limit: int,
    extra_topic_ids: Iterable[int] = (),
    topic_id: int | None = None,
    channels: Iterable[str] = (),
    channel: str | None = None,
) -> list[Event]:
    """Events with ``after < id <= upto`` that ``user`` may see, oldest first, at most ``limit``.

    With ``topic_id`` (or ``channel``), only that topic's (channel's) events. ``channels``:
    object channels the caller has just authorised. Each event carries ``is_read``.
    """
    events = visible_events(user, extra_topic_ids=extra_topic_ids, channels=channels).filter(
        id__gt=after, id__lte=upto
    )
    if topic_id is not None:
        events = events.filter(to_topic=True, topic_id=topic_id)
    if channel is not None:
        events = events.filter(channel=channel)
    return list(_with_read_flag(events, user).order_by("id")[:limit])


def replays(requests: Sequence[ReplayRequest]) -> list[list[tuple[Event, bool]]]:
    """For each ``(user, after, upto, limit, extra_topic_ids)`` of a signed-in user, what
    :func:`replay` returns for it, as ``(event, is_read)`` oldest first: the replays that
    arrive together after a restart (``realtime/batching.py``).

    The ids and read flags come from one compiled statement per shape (``rows_each``: one
    statement for the whole batch on PostgreSQL; building the audience filter through the ORM
    cost ~12 ms of CPU per replay); the events themselves from one query for all."""
    by_shape: dict[tuple, list[tuple[int, dict]]] = {}
    for i, (user, after, upto, limit, extra) in enumerate(requests):
        if not user.is_authenticated:
            raise ValueError("replays() is for signed-in users")
        topic_count, values = _described(user, extra)
        values.update(after=after, upto=upto)
        by_shape.setdefault((bool(user.is_staff), topic_count, limit), []).append((i, values))
    found: list[list[tuple[int, bool]]] = [[] for _ in requests]
    for shape, items in by_shape.items():
        rows = _REPLAY.rows_each(shape, [values for _, values in items])
        for (i, _), item_rows in zip(items, rows, strict=True):
            found[i] = sorted((event_id, bool(is_read)) for event_id, is_read in item_rows)
    wanted = {event_id for rows in found for event_id, _ in rows}
    events = Event.objects.select_related("topic").in_bulk(wanted) if wanted else {}
    # An event deleted between the two reads (a purge) is left out, as if read a moment later.
    return [
        [(events[event_id], is_read) for event_id, is_read in rows if event_id in events]
        for rows in found
    ]


ReplayRequest = tuple[AnyUser, int, int, int, Iterable[int]]


def _build_replay(
    shape: tuple[bool, int, int],
    *,
    user_id: int,
    joined: datetime,
    now: datetime,
    after: int,
    upto: int,
    **topics: int,
) -> list:
    """(id, is_read) of what :func:`replay` returns for a signed-in user described by
    values alone (what CompiledQuery swaps); ``shape`` is (is_staff, number of extra topics
    ``topic0``..., limit)."""
    is_staff, topic_count, limit = shape
    user = _stand_in(user_id, joined, is_staff)
    extra = [topics[f"topic{i}"] for i in range(topic_count)]
    is_read = ExpressionWrapper(
        Q(id__lte=_watermark(user_id))
        | Exists(ReadMark.objects.filter(user_id=user_id, event=OuterRef("pk"))),
        output_field=BooleanField(),
    )
    events = Event.objects.filter(
        visible_to(user, extra_topic_ids=extra, now=now), id__gt=after, id__lte=upto
    )
    return list(
        events.annotate(is_read=is_read).order_by("id").values_list("id", "is_read")[:limit]
    )


_REPLAY = CompiledQuery(_build_replay)


def committed_events(*, after: int, upto: int | None = None, limit: int = 500) -> list[Event]:
    """Committed events above ``after`` in id order, with what the hub needs to fan them out."""
    events = Event.objects.filter(id__gt=after)
    if upto is not None:
        events = events.filter(id__lte=upto)
    return list(events.select_related("topic").prefetch_related("groups").order_by("id")[:limit])


@dataclass(frozen=True)
class ReadStats:
    recipients: int
    read: int

    @property
    def percent(self) -> float:
        return round(100 * self.read / self.recipients, 1) if self.recipients else 0.0


def _readers_q(event: Event) -> Q:
    return Q(notification_inbox__read_through__gte=event.id) | Q(
        pk__in=ReadMark.objects.filter(event=event).values("user")
    )


def read_stats(event: Event) -> ReadStats:
    """How many users the event reaches now and how many of them have read it."""
    from .audiences import audience_users

    users = audience_users(event)
    return ReadStats(recipients=users.count(), read=users.filter(_readers_q(event)).count())


def unread_by(event: Event, *, limit: int = 100) -> list:
    """Users the event reaches who have not read it (at most ``limit``)."""
    from .audiences import audience_users

    return list(audience_users(event).exclude(_readers_q(event)).order_by("pk")[:limit])


def unread_users(event: Event) -> QuerySet:
    """Every user the event reaches now who has not read it, by id (a broadcast's follow-up)."""
    from .audiences import audience_users

    return audience_users(event).exclude(_readers_q(event)).order_by("pk")


def readers(event: Event) -> QuerySet:
    """Every user the event reaches now who has read it."""
    from .audiences import audience_users

    return audience_users(event).filter(_readers_q(event))


def users_in_groups(group_ids: Iterable[int]) -> list[int]:
    """Ids of users who belong to any of these groups."""
    from django.contrib.auth import get_user_model

    ids = list(group_ids)
    if not ids:
        return []
    users = get_user_model()._default_manager.filter(groups__in=ids)
    return list(users.values_list("pk", flat=True).distinct())


# The feed (the bell's list and the JSON inbox API) --------------------------------------------


def seen_through(user: AnyUser) -> int:
    """The user's "seen" watermark (0 for anonymous visitors and users who never opened it)."""
    from .models import FeedState

    if not user.is_authenticated:
        return 0
    value = FeedState.objects.filter(user=user).values_list("seen_through", flat=True).first()
    return value or 0


def unseen_count(user: AnyUser) -> int | None:
    """Events the user may see above the seen watermark and not archived (None: anonymous)."""
    from .models import ArchiveMark

    if not user.is_authenticated:
        return None
    return (
        Event.objects.filter(visible_to(user), id__gt=seen_through(user))
        .exclude(Exists(ArchiveMark.objects.filter(user=user, event=OuterRef("pk"))))
        .count()
    )


@dataclass(frozen=True)
class FeedPage:
    events: list[Event]  # newest first; each with ``is_read`` and ``is_archived``
    next_before: int | None  # pass as ``before`` for the next (older) page; None: no more
    seen_through: int


FEED_PAGE_MAX = 100


def feed_page(
    user: AnyUser,
    *,
    before: int | None = None,
    limit: int = 20,
    unread_only: bool = False,
    topic: str | None = None,
    archived: bool = False,
    group: bool = False,
    group_key: str | None = None,
) -> FeedPage:
    """One page of the feed: events ``user`` may see (the audience rule), newest first, with
    ``id < before``, optionally only unread ones or one topic's; archived events only with
    ``archived=True`` (and then only those). With ``group``, events that share a
    ``group_key`` collapse into their newest (see :func:`group_summaries`); ``group_key``
    keeps one group's events."""
    from .models import ArchiveMark

    limit = max(1, min(limit, FEED_PAGE_MAX))
    events = _with_read_flag(visible_events(user), user)
    if user.is_authenticated:
        events = events.annotate(
            is_archived=Exists(ArchiveMark.objects.filter(user=user, event=OuterRef("pk")))
        ).filter(is_archived=archived)
    elif archived:
        events = events.none()
    else:
        events = events.annotate(is_archived=ExpressionWrapper(Q(pk__in=[]), BooleanField()))
    if before is not None:
        events = events.filter(id__lt=before)
    if unread_only:
        events = events.filter(is_read=False)
    if topic is not None:
        events = events.filter(topic__slug=topic)
    if group_key is not None:
        events = events.filter(group_key=group_key)
    if group:
        events = events.filter(
            Q(group_key="")
            | ~Exists(_newer_in_group(user, archived=archived, unread_only=unread_only))
        )
    rows = list(events.order_by("-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return FeedPage(
        events=rows,
        next_before=rows[-1].id if more and rows else None,
        seen_through=seen_through(user),
    )


def _feed_state_filter(events: QuerySet, user: AnyUser, *, archived: bool) -> QuerySet:
    from .models import ArchiveMark

    if not user.is_authenticated:
        return events if not archived else events.none()
    marked = Exists(ArchiveMark.objects.filter(user=user, event=OuterRef("pk")))
    return events.filter(marked) if archived else events.exclude(marked)


def _newer_in_group(user: AnyUser, *, archived: bool, unread_only: bool) -> QuerySet:
    """A newer event of the outer row's group that would be listed too (same filters)."""
    newer = Event.objects.filter(
        visible_to(user), group_key=OuterRef("group_key"), id__gt=OuterRef("id")
    )
    newer = _feed_state_filter(newer, user, archived=archived)
    if unread_only and user.is_authenticated:
        newer = newer.filter(id__gt=read_through(user)).exclude(
            Exists(ReadMark.objects.filter(user=user, event=OuterRef("pk")))
        )
    return newer


GROUP_ACTORS_SHOWN = 3


def group_summaries(
    user: AnyUser, keys: Iterable[str], *, archived: bool = False
) -> dict[str, dict]:
    """Per ``group_key``: how many events the user may see (``count``), how many are unread,
    and who acted, newest first (``actors``: at most three usernames; ``actor_count``)."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    events = _feed_state_filter(
        _with_read_flag(visible_events(user), user).filter(group_key__in=keys),
        user,
        archived=archived,
    )
    summaries: dict[str, dict] = {
        key: {"key": key, "count": 0, "unread": 0, "actors": [], "actor_count": 0} for key in keys
    }
    for key, is_read in events.values_list("group_key", "is_read"):
        summaries[key]["count"] += 1
        summaries[key]["unread"] += 0 if is_read else 1
    name = f"actor__{get_user_model().USERNAME_FIELD}"
    actors = (
        events.filter(actor__isnull=False)
        .values("group_key", name)
        .annotate(last=Max("id"))
        .order_by("-last")
    )
    for row in actors:
        summary = summaries[row["group_key"]]
        summary["actor_count"] += 1
        if len(summary["actors"]) < GROUP_ACTORS_SHOWN:
            summary["actors"].append(row[name])
    return summaries


def group_event_ids(user: AnyUser, key: str, *, limit: int = 10_000) -> list[int]:
    """Ids of the events of one group that ``user`` may see, newest first (at most ``limit``)."""
    return list(
        visible_events(user)
        .filter(group_key=key)
        .order_by("-id")
        .values_list("pk", flat=True)[:limit]
    )


def preferences_of(user: AbstractBaseUser):
    """The user's stored :class:`~notifications.models.Preferences` (unsaved defaults if none)."""
    from .models import Preferences

    return Preferences.objects.filter(user=user).first() or Preferences(user=user)


def followed_topics(user: AnyUser) -> list:
    """Topics the user follows, directly or through a group, by name (what the feed's topic
    filter and the mute list offer)."""
    from .audiences import membership_of
    from .models import Topic

    if not user.is_authenticated:
        return []
    return list(Topic.objects.filter(pk__in=membership_of(user).topic_ids).order_by("name"))


def notifications_about(
    obj: object, *, user: AbstractBaseUser | AnonymousUser | None = None
) -> QuerySet[Event]:
    """Events sent with ``notify(..., target=obj)``, newest first; with ``user``, only those
    that user may see (the same rule as the inbox). ``ValueError`` unless ``obj`` is a saved
    model instance."""
    from .targets import target_reference

    content_type, pk = target_reference(obj)
    events = Event.objects.filter(target_content_type=content_type, target_object_id=pk)
    if user is not None:
        events = events.filter(visible_to(user))
    return events.order_by("-id")
