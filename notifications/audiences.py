"""Who receives an event: resolving ``notify()``'s ``recipients`` and matching users to events.

The same rule is written three times, and each must change with the others:
:func:`visible_to` (a query: events a user may see, for the inbox and replay),
:func:`audience_users` (a query: users an event reaches, for counts and read statistics) and
the hub's in-memory matcher (``Hub._targets``, which reads the event message built in
``services.notify`` and matches it against each socket's :class:`Membership`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.db.models import Exists, OuterRef, Q, QuerySet, Value

from .compiled import CompiledQuery
from .models import Event, Reach, Recipient, Subscription, Topic

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

    def __init__(
        self,
        *,
        users: Iterable[AbstractBaseUser | int] = (),
        groups: Iterable[Group | int] = (),
        topic: Topic | str | None = None,
        reach: str = Reach.TARGETED,
        permission: Permission | str | None = None,
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

    @property
    def is_empty(self) -> bool:
        return not (
            self.users or self.groups or self.topic or self.reach or self.permission is not None
        )


@dataclass
class Membership:
    """What the hub needs to know about a connected user to match events in memory."""

    user_id: int | None
    is_staff: bool = False
    group_ids: frozenset[int] = frozenset()
    topic_ids: frozenset[int] = frozenset()


def _pk(obj: Any, kind: str) -> int:
    if isinstance(obj, bool):
        raise ValueError(f"not a {kind}: {obj!r}")
    if isinstance(obj, int):
        return obj
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
        audience = (
            Audience(reach=Reach.EVERYONE)
            if recipients == EVERYONE
            else (Audience(topic=recipients))
        )
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


def _active_users() -> QuerySet:
    return get_user_model()._default_manager.filter(is_active=True)


def users_of(audience: Audience) -> QuerySet:
    """Active users an audience reaches (before the event exists)."""
    users = _active_users()
    if audience.reach in (Reach.EVERYONE, Reach.AUTHENTICATED):
        return users
    q = Q(pk__in=audience.users) if audience.users else Q(pk__in=[])
    if audience.reach == Reach.STAFF:
        q |= Q(is_staff=True)
    if audience.groups:
        q |= Q(groups__in=audience.groups)
    if audience.topic is not None:
        q |= Q(pk__in=Subscription.objects.filter(topic=audience.topic).values("user")) | Q(
            groups__in=audience.topic.groups.all()
        )
    return users.filter(q).distinct()


def audience_users(event: Event) -> QuerySet:
    """Active users a stored event reaches now (group and topic membership as it is today)."""
    users = _active_users()
    if event.reach in (Reach.EVERYONE, Reach.AUTHENTICATED):
        return users.filter(date_joined__lte=event.created_at)
    q = Q(pk__in=Recipient.objects.filter(event=event).values("user"))
    if event.reach == Reach.STAFF:
        q |= Q(is_staff=True, date_joined__lte=event.created_at)
    q |= Q(groups__in=event.groups.all())
    if event.to_topic and event.topic_id:
        q |= Q(pk__in=Subscription.objects.filter(topic_id=event.topic_id).values("user")) | Q(
            groups__notification_topics=event.topic_id
        )
    return users.filter(q).distinct()


def membership_of(user: AbstractBaseUser | AnonymousUser) -> Membership:
    """Load what the realtime hub matches events against (one blocking query, compiled once:
    every signed-in handshake runs it)."""
    if not user.is_authenticated:
        return Membership(user_id=None)
    group_ids, topic_ids = set(), set()
    for kind, pk in _MEMBERSHIP.rows((), user_id=user.pk):
        (group_ids if kind == "g" else topic_ids).add(pk)
    return Membership(
        user_id=user.pk,
        is_staff=user.is_staff,
        group_ids=frozenset(group_ids),
        topic_ids=frozenset(topic_ids),
    )


def _membership_query(shape: tuple, *, user_id: int) -> list[tuple[str, int]]:
    """("g", group id) for the user's groups, ("t", topic id) for the topics it follows:
    subscribed, or followed by one of its groups."""
    groups = Group.objects.filter(user=user_id).order_by().values_list(Value("g"), "pk")
    topics = (
        Topic.objects.filter(Q(subscription__user=user_id) | Q(groups__user=user_id))
        .order_by()
        .values_list(Value("t"), "pk")
        .distinct()
    )
    return list(groups.union(topics, all=True))


_MEMBERSHIP = CompiledQuery(_membership_query)


def visible_to(user: AbstractBaseUser | AnonymousUser, *, extra_topic_ids: Iterable[int] = ()) -> Q:
    """A filter on :class:`Event` for the events ``user`` may see.

    ``extra_topic_ids`` are topics followed for the duration of one connection (anonymous
    visitors' subscriptions to public topics).
    """
    extra = list(extra_topic_ids)
    q = Q(reach=Reach.EVERYONE)
    if extra:
        q |= Q(to_topic=True, topic_id__in=extra)
    if not user.is_authenticated:
        return q
    joined = user.date_joined
    q = Q(reach=Reach.EVERYONE, created_at__gte=joined) | Q(
        reach=Reach.AUTHENTICATED, created_at__gte=joined
    )
    if user.is_staff:
        q |= Q(reach=Reach.STAFF, created_at__gte=joined)
    if extra:
        q |= Q(to_topic=True, topic_id__in=extra)
    q |= Exists(Recipient.objects.filter(event=OuterRef("pk"), user=user))
    q |= Exists(Event.groups.through.objects.filter(event=OuterRef("pk"), group__user=user))
    q |= Q(to_topic=True) & (
        Exists(Subscription.objects.filter(topic=OuterRef("topic"), user=user))
        | Exists(Topic.groups.through.objects.filter(topic=OuterRef("topic"), group__user=user))
    )
    return q
