"""notify() and the read/subscribe services: arguments, audiences, counts, read state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from notifications import Audience, anotify, notify
from notifications.models import Broadcast, Event, Recipient, Topic
from notifications.selectors import inbox_page, read_stats, unread_by, unread_count
from notifications.services import mark_all_read, mark_read, send_broadcast
from notifications.signals import notification_sent

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(make_user):
    staff = make_user("staff", is_staff=True)
    alice = make_user("alice")
    bob = make_user("bob")
    make_user("gone", is_active=False)
    editors = Group.objects.create(name="editors")
    alice.groups.add(editors)
    return staff, alice, bob, editors


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"title": ""}, "title is required"),
        ({"title": "x" * 201}, "longer than 200"),
        ({"level": "fatal"}, "level must be one of"),
        ({"data": [1]}, "data must be a dict"),
        ({"data": {"when": object()}}, "not JSON"),
        # Poison data (issue 8, defect 6): what cannot be stored everywhere or sent as a
        # frame is refused before anything is stored.
        ({"data": {"v": "\ud800"}}, r"data\.v is not valid Unicode"),
        ({"data": {"v": float("nan")}}, r"data\.v must be a finite number"),
        ({"data": {"v": [1, float("inf")]}}, r"data\.v\[1\] must be a finite"),
        ({"data": {"v": "a\x00b"}}, "NUL"),
        ({"data": {"\x00": 1}}, "NUL"),
        ({"data": {1: "x"}}, "key that is not a string"),
        ({"data": {"v": 2**64}}, "beyond 64 bits"),
        ({"data": {"v": {"w": {}}} | {"deep": _nested(40)}}, "nested more than"),
        ({"title": "bad \ud800"}, "title is not valid Unicode"),
        ({"title": "nul\x00"}, "title must not contain NUL"),
        ({"body": "\udfff"}, "body is not valid Unicode"),
        ({"url": "/a\x00"}, "url must not contain NUL"),
        ({"idempotency_key": "k\ud800"}, "idempotency_key is not valid"),
        ({"url": "javascript:alert(1)"}, "relative or http"),
        ({"body": 5}, "body must be a string"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"topic": "no-such-topic"}, "no topic with slug"),
    ],
)
def test_bad_arguments_raise_value_error_and_store_nothing(people, kwargs, message):
    _, alice, _, _ = people
    args = {"title": "ok", **kwargs}
    title = args.pop("title")
    with pytest.raises(ValueError, match=message):
        notify(alice, title, **args)
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "recipients",
    [
        None,
        5,
        [],
        ["alice"],
        Group.objects.none,
        "no-such-topic",
        b"everyone",
        # Ids beyond 64 bits overflowed the database driver (issue 8, defect 6).
        lambda: Audience(users=[2**64]),
        lambda: Audience(groups=[-(2**63) - 1]),
    ],
)
def test_bad_recipients(people, recipients):
    with pytest.raises(ValueError):
        notify(recipients() if callable(recipients) else recipients, "x")
    assert Event.objects.count() == 0


def test_recipient_counts(people):
    _, alice, bob, editors = people
    topic = Topic.objects.create(name="News", slug="news")
    topic.users.add(bob)
    topic.groups.add(editors)
    assert notify(alice, "x").recipient_count == 1
    assert notify([alice, bob], "x").recipient_count == 2
    assert notify(Group.objects.get(name="editors"), "x").recipient_count == 1
    assert notify("news", "x").recipient_count == 2  # bob directly, alice via editors
    assert notify(Audience(reach="staff"), "x").recipient_count == 1
    assert notify(Audience(reach="authenticated"), "x").recipient_count == 3
    assert notify("everyone", "x").recipient_count == 3  # active users
    from django.contrib.auth import get_user_model

    assert (
        notify(get_user_model().objects.filter(username__in=["alice", "bob"]), "x").recipient_count
        == 2
    )


def test_broad_audience_stores_one_row(people):
    notify("everyone", "announcement")
    assert Event.objects.count() == 1
    assert Recipient.objects.count() == 0


def test_idempotency_key_sends_once(people):
    _, alice, _, _ = people
    first = notify(alice, "x", idempotency_key="order-7")
    again = notify(alice, "x", idempotency_key="order-7")
    assert again.id == first.id
    assert Event.objects.count() == 1
    Event.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=2))
    later = notify(alice, "x", idempotency_key="order-7")
    assert later.id != first.id


def test_sent_signal_fires_on_commit_only(people, django_capture_on_commit_callbacks):
    _, alice, _, _ = people
    sent = []
    notification_sent.connect(lambda sender, event, **kw: sent.append(event.id), weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            event = notify(alice, "x")
        assert sent == []
        for callback in callbacks:
            callback()
        assert sent == [event.id]
    finally:
        notification_sent.receivers.clear()


def test_topic_label_must_match_topic_recipients(people):
    Topic.objects.create(name="A", slug="a")
    Topic.objects.create(name="B", slug="b")
    with pytest.raises(ValueError, match="differs"):
        notify("a", "x", topic="b")
    event = notify(people[1], "labelled", topic="a")
    assert event.topic.slug == "a" and not event.to_topic


def test_read_state_and_unread_counts(people):
    _, alice, bob, editors = people
    one = notify(alice, "one")
    two = notify(editors, "two")
    three = notify("everyone", "three")
    bobs = notify(bob, "bob's")
    assert unread_count(alice) == 3
    assert mark_read(alice, [one.id, bobs.id]) == 2  # bob's id is ignored
    assert unread_count(bob) == 2
    page = inbox_page(alice).page
    assert [(e.id, e.is_read) for e in page] == [(three.id, False), (two.id, False), (one.id, True)]
    assert mark_all_read(alice) == 0
    assert all(e.is_read for e in inbox_page(alice).page)
    four = notify(alice, "four")
    assert unread_count(alice) == 1
    assert unread_count(alice, upto=four.id - 1) == 0


def test_users_who_joined_later_do_not_inherit_old_announcements(people, make_user):
    notify("everyone", "old news")
    newcomer = make_user("newcomer")
    newcomer.date_joined = timezone.now() + timedelta(seconds=1)
    newcomer.save()
    assert unread_count(newcomer) == 0


def _grant(user, codename: str) -> None:
    user.user_permissions.add(Permission.objects.get(codename=codename))


def test_broadcast_send_and_stats(people):
    staff, alice, bob, _ = people
    _grant(staff, "send_broadcast")
    staff = type(staff).objects.get(pk=staff.pk)  # a fresh permission cache
    broadcast = Broadcast.objects.create(
        title="Maintenance", audience=Broadcast.Audience.AUTHENTICATED
    )
    event = send_broadcast(broadcast, by=staff)
    broadcast.refresh_from_db()
    assert broadcast.sent_at is not None and broadcast.sent_by == staff and broadcast.event == event
    assert event.recipient_count == 3
    mark_read(alice, [event.id])
    mark_all_read(bob)
    stats = read_stats(event)
    assert (stats.recipients, stats.read, stats.percent) == (3, 2, 66.7)
    assert [u.username for u in unread_by(event)] == ["staff"]
    with pytest.raises(ValueError, match="already sent"):
        send_broadcast(broadcast, by=staff)


def test_broadcast_to_empty_group_list_is_refused(people, make_user):
    root = make_user("root", is_superuser=True)
    broadcast = Broadcast.objects.create(title="x", audience=Broadcast.Audience.GROUPS)
    with pytest.raises(ValueError, match="choose at least one"):
        send_broadcast(broadcast, by=root)
    assert Event.objects.count() == 0


@pytest.mark.parametrize("who", ["nobody", "staff", "viewer", "inactive-holder"])
def test_send_broadcast_needs_the_send_permission(people, make_user, who):
    """PROTOCOL.md, Broadcasts: send_broadcast raises PermissionDenied unless the user has
    notifications.send_broadcast (issue 8, defect 1)."""
    user = {
        "nobody": None,
        "staff": people[0],
        "viewer": make_user("viewer", is_staff=True),
        "inactive-holder": make_user("holder", is_staff=True, is_active=False),
    }[who]
    if who == "viewer":
        _grant(user, "view_broadcast")
    if who == "inactive-holder":
        _grant(user, "send_broadcast")
    broadcast = Broadcast.objects.create(title="x", audience=Broadcast.Audience.EVERYONE)
    with pytest.raises(PermissionDenied, match=r"notifications\.send_broadcast"):
        send_broadcast(broadcast, by=user)
    broadcast.refresh_from_db()
    assert broadcast.sent_at is None and Event.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_anotify(amake_user):
    alice = await amake_user("alice")
    event = await anotify(alice, "from async code", level="warning")
    assert event.id and event.recipient_count == 1 and event.level == "warning"


def test_unknown_group_or_user_ids_raise_value_error(people):
    with pytest.raises(ValueError, match="no group with id 999"):
        notify(Audience(groups=[999]), "x")
    with pytest.raises(ValueError, match="no user with id 999"):
        notify(Audience(users=[999]), "x")
    assert Event.objects.count() == 0


def test_read_signal_reports_only_newly_read_ids(people, django_capture_on_commit_callbacks):
    from notifications.signals import notification_read

    _, alice, _, _ = people
    first, second = notify(alice, "one"), notify(alice, "two")
    calls = []
    notification_read.connect(lambda sender, user, ids, **kw: calls.append(ids), weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            mark_read(alice, [first.id])
        with django_capture_on_commit_callbacks(execute=True):
            mark_read(alice, [first.id, second.id])
        with django_capture_on_commit_callbacks(execute=True):
            mark_read(alice, [first.id, second.id])  # nothing new: no signal
        with django_capture_on_commit_callbacks(execute=True):
            mark_all_read(alice)
    finally:
        notification_read.receivers.clear()
    assert calls == [[first.id], [second.id], None]
