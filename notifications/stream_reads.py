"""The reads every signed-in handshake and resume makes: the ``hello`` figures and the
replay, compiled once per shape (:mod:`notifications.compiled`) and run for a whole batch of
sockets at once (``realtime/handshakes.py``). Building their audience filter through the ORM
cost more than running it (~12 ms of CPU for a replay); each compiled statement is checked
against its ORM definition in the tests. ``selectors`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
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
from .models import Event, InboxState, ReadMark

AnyUser = AbstractBaseUser | AnonymousUser


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
