"""Who receives an event: the one audience rule, and ``notify()``'s ``recipients``.

The rule (docs/architecture.md, "Who may see what") is defined once, here, in three forms kept
side by side:

- the relations it is made of (:func:`holds_permission`, :func:`may_read_topic`,
  :func:`follows_topic`, :func:`in_groups`), each one boolean expression over a user and an
  object that either side may leave open (``OuterRef``), so the same definition serves both
  database forms below;
- the database forms: :func:`visible_to` (events a user may see: inbox, replay, unread counts)
  and :func:`_reached_users` (users an audience reaches: recipient counts, read statistics);
- the in-memory form: :class:`Membership` (loaded with :func:`membership_of` from the same
  relations) and :func:`matches`, which ``Hub._targets`` implements with indexes.

``tests/test_audience_rule.py`` checks with random users, groups, topics, grants and changes
that every form agrees with the policy; ``tests/test_hub_rule.py`` that the hub's indexes
agree with :func:`matches`.

Access comes from grants only: being active, staff, a superuser, a group member, a topic
member, or holding a permission, as they are *now*. A ``Subscription`` row is a wish to follow,
never a grant: it counts only while the user may read the topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.utils import timezone

from .compiled import CompiledQuery
from .models import Event, Reach, Recipient, Subscription, Topic
from .validation import check_id

EVERYONE = "everyone"


@dataclass(frozen=True)
class Audience:
    """A union of audience parts. Build one to reach staff or all signed-in users::

    notify(Audience(reach="staff"), "Deploy at 18:00")
    notify(Audience(users=[alice, bob], groups=[editors]), "Review needed")
    """

    users: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    topic: Topic | None = None
    reach: str = Reach.TARGETED
    permission: int | None = None
    channel: str | None = None

    def __init__(
        self,
        *,
        users: Iterable[AbstractBaseUser | int] = (),
        groups: Iterable[Group | int] = (),
        topic: Topic | str | None = None,
        reach: str = Reach.TARGETED,
        permission: Permission | str | None = None,
        channel: str | None = None,
    ) -> None:
        if reach not in Reach.values:
            raise ValueError(f"reach must be one of {Reach.values!r}, not {reach!r}")
        object.__setattr__(self, "users", tuple(sorted({_pk(u, "user") for u in users})))
        object.__setattr__(self, "groups", tuple(sorted({_pk(g, "group") for g in groups})))
        object.__setattr__(self, "topic", _topic(topic) if topic is not None else None)
        object.__setattr__(self, "reach", reach)
        object.__setattr__(
            self, "permission", _permission(permission) if permission is not None else None
        )
        object.__setattr__(self, "channel", _channel(channel) if channel is not None else None)

    @property
    def is_empty(self) -> bool:
        return not (
            self.users
            or self.groups
            or self.topic
            or self.reach
            or self.permission is not None
            or self.channel is not None
        )


@dataclass
class Membership:
    """What the hub needs to know about a connected user to match events in memory.

    ``topic_ids`` are the topics the user follows (:func:`follows_topic`), ``permission_ids``
    the permissions held directly or through a group (a superuser holds every permission)."""

    user_id: int | None
    is_staff: bool = False
    is_superuser: bool = False
    group_ids: frozenset[int] = frozenset()
    topic_ids: frozenset[int] = frozenset()
    permission_ids: frozenset[int] = frozenset()


def _pk(obj: Any, kind: str) -> int:
    if isinstance(obj, bool):
        raise ValueError(f"not a {kind}: {obj!r}")
    if isinstance(obj, int):
        return check_id(obj, kind)
    pk = getattr(obj, "pk", None)
    if pk is None:
        raise ValueError(f"not a saved {kind}: {obj!r}")
    return pk


def _permission(value: Permission | str) -> int:
    """The pk of a permission named ``"app_label.codename"`` (as ``user.has_perm`` takes it)."""
    if isinstance(value, Permission):
        if value.pk is None:
            raise ValueError("the permission is not saved")
        return value.pk
    if not isinstance(value, str) or value.count(".") != 1:
        raise ValueError(f"permission must be 'app_label.codename', not {value!r}")
    app_label, codename = value.split(".")
    pk = (
        Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        .values_list("pk", flat=True)
        .first()
    )
    if pk is None:
        raise ValueError(f"no permission {value!r}")
    return pk


def _channel(value: str) -> str:
    """A registered object channel's name (notifications.channels)."""
    from . import channels

    if not channels.is_channel_name(value):
        raise ValueError(f"not a channel name: {value!r}")
    if channels.resolve(value) is None:
        raise ValueError(f"no channel pattern matches {value!r} (register one with @channel)")
    return value


def _topic(value: Topic | str) -> Topic:
    if isinstance(value, Topic):
        if value.pk is None:
            raise ValueError("the topic is not saved")
        return value
    if isinstance(value, str):
        try:
            return Topic.objects.get(slug=value)
        except Topic.DoesNotExist:
            raise ValueError(f"no topic with slug {value!r}") from None
    raise ValueError(f"topic must be a Topic or its slug, not {type(value).__name__}")


def resolve(recipients: Any) -> Audience:
    """Turn ``notify()``'s ``recipients`` argument into an :class:`Audience`.

    Accepts a user, an iterable or QuerySet of users, a Group, a Topic or its slug,
    ``"everyone"`` or an :class:`Audience`. Raises ``ValueError`` for anything else.
    """
    user_model = get_user_model()
    if isinstance(recipients, Audience):
        audience = recipients
    elif isinstance(recipients, str):
        if recipients == EVERYONE:
            audience = Audience(reach=Reach.EVERYONE)
        elif "." in recipients:  # topic slugs have no dot: an object channel ("orders.42")
            audience = Audience(channel=recipients)
        else:
            audience = Audience(topic=recipients)
    elif isinstance(recipients, user_model):
        audience = Audience(users=[recipients])
    elif isinstance(recipients, Group):
        audience = Audience(groups=[recipients])
    elif isinstance(recipients, Topic):
        audience = Audience(topic=recipients)
    elif isinstance(recipients, QuerySet):
        if recipients.model is not user_model:
            raise ValueError(f"a QuerySet of recipients must be of users, not {recipients.model}")
        audience = Audience(users=recipients.values_list("pk", flat=True))
    elif isinstance(recipients, Iterable) and not isinstance(recipients, (bytes, dict)):
        items = list(recipients)
        for item in items:
            if not isinstance(item, user_model):
                raise ValueError(f"recipients must all be users; got {item!r}")
        audience = Audience(users=items)
    else:
        raise ValueError(
            "recipients must be a user, users, a Group, a Topic or its slug, 'everyone' "
            f"or an Audience; got {recipients!r}"
        )
    if audience.is_empty:
        raise ValueError("recipients is empty: nobody would receive this notification")
    return audience


VIEW_PRIVATE_TOPICS = ("notifications", "view_private_topics")

# A user, a topic or a permission in the relations below: a pk, or an OuterRef to one.
Ref = int | OuterRef


def _users() -> QuerySet:
    return get_user_model()._default_manager


# The relations ------------------------------------------------------------------------------------


def holds_permission(user: Ref, permission: Ref | Subquery) -> Q:
    """``user`` holds ``permission``: as a superuser, directly, or through a group (what
    ``user.has_perm`` answers with ModelBackend, for an active user)."""
    user_model = get_user_model()
    return Q(
        Exists(_users().filter(pk=user, is_superuser=True))
        | Exists(
            user_model.user_permissions.through.objects.filter(
                **{
                    user_model.user_permissions.field.m2m_field_name(): user,
                    "permission": permission,
                }
            )
        )
        | Exists(Group.permissions.through.objects.filter(group__user=user, permission=permission))
    )


def _view_private_topics() -> Subquery:
    app_label, codename = VIEW_PRIVATE_TOPICS
    return Subquery(
        Permission.objects.filter(content_type__app_label=app_label, codename=codename).values(
            "pk"
        )[:1]
    )


def _topic_member(user: Ref, topic: Ref) -> Exists:
    return Exists(Topic.members.through.objects.filter(user=user, topic=topic))


def _topic_via_group(user: Ref, topic: Ref) -> Exists:
    return Exists(Topic.groups.through.objects.filter(topic=topic, group__user=user))


def may_read_topic(user: Ref, topic: Ref) -> Q:
    """``user`` (signed in) may read ``topic``: it is public, or the user is a member, in one
    of its groups, or holds ``notifications.view_private_topics``."""
    return Q(
        Exists(Topic.objects.filter(pk=topic, is_public=True))
        | _topic_member(user, topic)
        | _topic_via_group(user, topic)
        | holds_permission(user, _view_private_topics())
    )


def follows_topic(user: Ref, topic: Ref) -> Q:
    """``user`` (signed in) follows ``topic``: as a member or through a group (both grants),
    or by their own subscription while they may read it."""
    subscribed = Exists(Subscription.objects.filter(user=user, topic=topic))
    readable_without_grant = Exists(Topic.objects.filter(pk=topic, is_public=True)) | (
        holds_permission(user, _view_private_topics())
    )
    return Q(
        _topic_member(user, topic)
        | _topic_via_group(user, topic)
        | (subscribed & readable_without_grant)
    )


def in_groups(user: Ref, groups: Any) -> Exists:
    """``user`` belongs to one of ``groups`` (ids, or a query of group ids)."""
    return Exists(Group.objects.filter(user=user, pk__in=groups))


def _live(now: datetime) -> Q:
    """Events not expired at ``now`` (Event.expires_at)."""
    return Q(expires_at__isnull=True) | Q(expires_at__gt=now)


# The database forms -------------------------------------------------------------------------------


def visible_to(
    user: AbstractBaseUser | AnonymousUser,
    *,
    extra_topic_ids: Iterable[int] = (),
    channels: Iterable[str] = (),
    now: datetime | None = None,
) -> Q:
    """A filter on :class:`Event` for the events ``user`` may see now.

    ``extra_topic_ids`` are topics followed for the duration of one connection (anonymous
    visitors' subscriptions to public topics); ``channels`` object channels the connection
    follows, which the caller has just authorised (notifications.channels). Without them,
    channel events are in nobody's inbox. Expired events are nobody's.
    """
    extra = list(extra_topic_ids)
    followed_channels = sorted(set(channels))
    q = Q(reach=Reach.EVERYONE)
    if extra:
        q |= Q(to_topic=True, topic_id__in=extra)
    if followed_channels:
        q |= Q(channel__in=followed_channels)
    if user.is_authenticated:
        uid, joined = user.pk, user.date_joined
        q = Q(reach__in=[Reach.EVERYONE, Reach.AUTHENTICATED], created_at__gte=joined)
        if user.is_staff:
            q |= Q(reach=Reach.STAFF, created_at__gte=joined)
        if extra:
            q |= Q(to_topic=True, topic_id__in=extra)
        if followed_channels:
            q |= Q(channel__in=followed_channels)
        q |= Exists(Recipient.objects.filter(event=OuterRef("pk"), user=uid))
        q |= Exists(Event.groups.through.objects.filter(event=OuterRef("pk"), group__user=uid))
        q |= Q(to_topic=True) & follows_topic(uid, OuterRef("topic"))
        q |= Q(permission__isnull=False) & holds_permission(uid, OuterRef("permission"))
    return _live(now or timezone.now()) & Q(q)


def _reached_users(
    *,
    reach: str,
    joined_by: datetime | None,
    users: Any,
    groups: Any,
    topic_id: int | None,
    permission_id: int | None,
) -> QuerySet:
    """Active users an audience reaches, as :func:`visible_to` would show it to each of them
    in their inbox (an object channel reaches sockets, not inboxes: it adds nobody).

    ``joined_by``: the event's creation time (users who joined later do not see broad
    announcements sent before), None before the event exists. ``users``, ``groups``: ids or
    queries of ids.
    """
    joined = Q(date_joined__lte=joined_by) if joined_by is not None else Q()
    if reach in (Reach.EVERYONE, Reach.AUTHENTICATED):
        q = joined
    else:
        q = Q(pk__in=users)
        if reach == Reach.STAFF:
            q |= Q(is_staff=True) & joined
        q |= in_groups(OuterRef("pk"), groups)
        if topic_id is not None:
            q |= follows_topic(OuterRef("pk"), topic_id)
        if permission_id is not None:
            q |= holds_permission(OuterRef("pk"), permission_id)
    return _users().filter(Q(is_active=True) & Q(q))


def users_of(audience: Audience) -> QuerySet:
    """Active users an audience reaches now (before the event exists: the recipient count and
    the admin's dry run)."""
    return _reached_users(
        reach=audience.reach,
        joined_by=None,
        users=list(audience.users),
        groups=list(audience.groups),
        topic_id=audience.topic.pk if audience.topic is not None else None,
        permission_id=audience.permission,
    )


def audience_users(event: Event) -> QuerySet:
    """Active users a stored event reaches now (grants as they are today), expiry aside."""
    return _reached_users(
        reach=event.reach,
        joined_by=event.created_at,
        users=Recipient.objects.filter(event=event).values("user"),
        groups=Event.groups.through.objects.filter(event=event).values("group"),
        topic_id=event.topic_id if event.to_topic else None,
        permission_id=event.permission_id,
    )


def may_read(user: AbstractBaseUser | AnonymousUser, topic: Topic) -> bool:
    """Whether ``user`` may read (so follow) ``topic``: anonymous visitors public ones only."""
    if topic.is_public:
        return True
    if not user.is_authenticated or not user.is_active:
        return False
    return (
        Topic.objects.filter(pk=topic.pk).filter(may_read_topic(user.pk, OuterRef("pk"))).exists()
    )


def follows(user: AbstractBaseUser | AnonymousUser, topic: Topic) -> bool:
    """Whether a signed-in ``user`` follows ``topic`` (:func:`follows_topic`)."""
    if not user.is_authenticated:
        return False
    return Topic.objects.filter(pk=topic.pk).filter(follows_topic(user.pk, OuterRef("pk"))).exists()


# The in-memory form -------------------------------------------------------------------------------


def membership_of(user: AbstractBaseUser | AnonymousUser) -> Membership:
    """Load what the realtime hub matches events against (one query, compiled once: every
    signed-in handshake runs it)."""
    if not user.is_authenticated:
        return Membership(user_id=None)
    return _membership(user, _MEMBERSHIP.rows((), user_id=user.pk))


def memberships_of(users: Sequence[AbstractBaseUser | AnonymousUser]) -> list[Membership]:
    """:func:`membership_of` for each user: the handshakes that arrive together
    (``realtime/batching.py``), in one statement on PostgreSQL (``CompiledQuery.rows_each``)."""
    signed_in = [user for user in users if user.is_authenticated]
    rows = iter(_MEMBERSHIP.rows_each((), [{"user_id": user.pk} for user in signed_in]))
    return [
        _membership(user, next(rows)) if user.is_authenticated else Membership(user_id=None)
        for user in users
    ]


def _membership(user: Any, rows: Iterable[tuple[str, int]]) -> Membership:
    found: dict[str, set[int]] = {"g": set(), "t": set(), "p": set()}
    for kind, pk in rows:
        found[kind].add(pk)
    return Membership(
        user_id=user.pk,
        is_staff=user.is_staff,
        is_superuser=user.is_superuser,
        group_ids=frozenset(found["g"]),
        topic_ids=frozenset(found["t"]),
        permission_ids=frozenset(found["p"]),
    )


def _membership_query(shape: tuple, *, user_id: int) -> list[tuple[str, int]]:
    """("g", id) for the user's groups, ("t", id) for the topics it follows
    (:func:`follows_topic`), ("p", id) for permissions held directly or through a group."""
    groups = Group.objects.filter(user=user_id).order_by().values_list(Value("g"), "pk")
    topics = (
        Topic.objects.filter(follows_topic(user_id, OuterRef("pk")))
        .order_by()
        .values_list(Value("t"), "pk")
    )
    user_model = get_user_model()
    direct = user_model.user_permissions.through.objects.filter(
        **{user_model.user_permissions.field.m2m_field_name(): user_id}
    ).values("permission")
    via_groups = Group.permissions.through.objects.filter(group__user=user_id).values("permission")
    permissions = (
        Permission.objects.filter(Q(pk__in=direct) | Q(pk__in=via_groups))
        .order_by()
        .values_list(Value("p"), "pk")
    )
    return list(groups.union(topics, permissions, all=True))


_MEMBERSHIP = CompiledQuery(_membership_query)


def matches(
    membership: Membership,
    message: dict[str, Any],
    *,
    topics: frozenset[int] = frozenset(),
    channels: frozenset[str] = frozenset(),
) -> bool:
    """Whether a socket with ``membership`` receives a live event (a ``messages.event`` or
    ``messages.push``); the definition that ``Hub._targets`` implements with indexes.
    ``topics`` and ``channels`` are what the connection follows for itself (anonymous
    visitors' topics, authorised object channels). ``users`` must be a list."""
    reach = message["reach"]
    if reach == Reach.EVERYONE:
        return True
    topic, channel = message["topic"], message.get("channel")
    if topic is not None and topic in topics:
        return True
    if channel is not None and channel in channels:
        return True
    uid = membership.user_id
    if uid is None:
        return False
    permission = message.get("permission")
    return (
        reach == Reach.AUTHENTICATED
        or (reach == Reach.STAFF and membership.is_staff)
        or uid in message["users"]
        or bool(membership.group_ids.intersection(message["groups"]))
        or (topic is not None and topic in membership.topic_ids)
        or (
            permission is not None
            and (membership.is_superuser or permission in membership.permission_ids)
        )
    )
