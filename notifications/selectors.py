"""Reads: the inbox, unread counts, the stream cursor and replay. Blocking ORM calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.paginator import Page, Paginator
from django.db.models import (
    BooleanField,
    Exists,
    ExpressionWrapper,
    Max,
    OuterRef,
    Q,
    QuerySet,
)
from django.utils import timezone

from .audiences import visible_to
from .models import Event, InboxState, Reach, ReadMark
from .stream_reads import (  # noqa: F401 - re-exported
    Greeting,
    greeting,
    greeting_orm,
    greetings,
    replays,
)

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
