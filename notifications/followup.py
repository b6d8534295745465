"""Reads for a broadcast's follow-up page: reach, live delivery, reads over time, who has not
read it. Recipients are users; anonymous visitors have no inbox and appear only as delivered
connections."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q, QuerySet

from . import selectors
from .models import Broadcast, InboxState, ReadMark


@dataclass(frozen=True)
class ReadPoint:
    """Readers by the end of a period after the send (cumulative)."""

    at: datetime
    label: str
    read: int
    percent: float


@dataclass(frozen=True)
class FollowUp:
    recipients_at_send: int  # users whose inbox held it when it went out
    reach_now: int  # users it reaches today (group and topic membership as it is now)
    read: int
    percent: float
    delivered_users: int
    delivered_anonymous: int
    delivered_connections: int
    delivery_reports: int
    timeline: list[ReadPoint]


def _step(span: timedelta) -> tuple[timedelta, str]:
    if span <= timedelta(hours=2):
        return timedelta(minutes=5), "%H:%M"
    if span <= timedelta(days=3):
        return timedelta(hours=1), "%d %b %H:00"
    return timedelta(days=1), "%d %b"


def read_times(broadcast: Broadcast) -> list[datetime]:
    """When each reader read it: the read mark's time, or for "mark all read" the time of
    the user's latest one (an upper bound: earlier ones are not kept)."""
    event = broadcast.event
    assert event is not None
    reader_ids = selectors.readers(event).values("pk")
    marks = dict(
        ReadMark.objects.filter(event=event, user_id__in=reader_ids).values_list(
            "user_id", "read_at"
        )
    )
    for user_id, at in InboxState.objects.filter(
        user_id__in=reader_ids, read_through__gte=event.id
    ).values_list("user_id", "read_through_at"):
        if user_id not in marks and at is not None:
            marks[user_id] = at
    return sorted(marks.values())


def timeline(broadcast: Broadcast, *, now: datetime, recipients: int) -> list[ReadPoint]:
    """Cumulative readers at regular steps from the send until ``now`` (at most 48 rows)."""
    start = broadcast.sent_at
    if start is None:
        return []
    step, fmt = _step(now - start)
    times = read_times(broadcast)
    points, index, at = [], 0, start + step
    while True:
        end = min(at, now)
        while index < len(times) and times[index] <= end:
            index += 1
        percent = round(100 * index / recipients, 1) if recipients else 0.0
        points.append(ReadPoint(at=end, label=end.strftime(fmt), read=index, percent=percent))
        if at >= now:
            break
        at += step
    # Readers with a time before the send (a mark-all-read racing the send) count from the
    # first row; the last row is the current total.
    return points[-48:]


def follow_up(broadcast: Broadcast, *, now: datetime) -> FollowUp:
    """The follow-up figures of a sent broadcast."""
    event = broadcast.event
    assert event is not None, "the broadcast was not sent"
    stats = selectors.read_stats(event)
    return FollowUp(
        recipients_at_send=event.recipient_count,
        reach_now=stats.recipients,
        read=stats.read,
        percent=stats.percent,
        delivered_users=broadcast.delivered_users,
        delivered_anonymous=broadcast.delivered_anonymous,
        delivered_connections=broadcast.delivered_connections,
        delivery_reports=broadcast.delivery_reports,
        timeline=timeline(broadcast, now=now, recipients=stats.recipients),
    )


def not_read_by(broadcast: Broadcast, *, search: str = "") -> QuerySet:
    """Users it reaches who have not read it, the sender excluded, optionally filtered by a
    substring of the username or email."""
    event = broadcast.event
    assert event is not None
    users = selectors.unread_users(event)
    if broadcast.sent_by_id is not None:
        users = users.exclude(pk=broadcast.sent_by_id)
    if search:
        model = users.model
        fields = [model.USERNAME_FIELD, model.get_email_field_name()]
        query = Q()
        for name in fields:
            query |= Q(**{f"{name}__icontains": search})
        users = users.filter(query)
    return users
