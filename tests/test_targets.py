"""notify(..., target=obj): the generic reference, the frame's ``target``, notifications_about,
and what deleting the object does (notifications/targets.py)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import post_delete
from django.utils import timezone

from notifications import Audience, notify
from notifications.models import Event, Topic
from notifications.selectors import notifications_about
from notifications.targets import _forget_deleted, forget_on_delete, forget_target

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def forget_groups():
    """forget_on_delete(Group) for one test."""
    forget_on_delete(Group)
    forget_on_delete(Group)  # idempotent: connected once
    yield
    assert post_delete.disconnect(
        _forget_deleted, sender=Group, dispatch_uid="notifications.targets.auth.Group"
    )


def test_target_is_stored_and_found(make_user):
    alice = make_user("alice")
    order, other = Group.objects.create(name="order-42"), Group.objects.create(name="order-43")
    first = notify(alice, "Order 42 paid", target=order)
    notify(alice, "Order 43 paid", target=other)
    second = notify(alice, "Order 42 shipped", target=order)
    notify(alice, "No target")
    assert Event.objects.get(pk=first.pk).target == order
    assert list(notifications_about(order)) == [second, first]  # newest first
    assert list(notifications_about(other).values_list("title", flat=True)) == ["Order 43 paid"]


def test_notifications_about_for_a_user_follows_the_audience_rule(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    order = Group.objects.create(name="order")
    to_alice = notify(alice, "yours", target=order)
    to_bob = notify(bob, "his", target=order)
    everyone = notify(Audience(reach="everyone"), "all", target=order)
    assert list(notifications_about(order, user=alice)) == [everyone, to_alice]
    assert list(notifications_about(order, user=bob)) == [everyone, to_bob]
    assert list(notifications_about(order)) == [everyone, to_bob, to_alice]


def test_string_primary_keys_work(make_user):
    alice = make_user("alice")
    session = Session.objects.create(
        session_key="k" * 40, session_data="", expire_date=timezone.now()
    )
    event = notify(alice, "about a session", target=session)
    assert event.target_object_id == "k" * 40
    assert list(notifications_about(session)) == [event]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda: Group(name="unsaved"), "must be saved"),
        (lambda: "order-42", "must be a model instance"),
        (lambda: 42, "must be a model instance"),
    ],
)
def test_bad_targets_raise_and_store_nothing(make_user, target, message):
    alice = make_user("alice")
    with pytest.raises(ValueError, match=message):
        notify(alice, "x", target=target())
    assert not Event.objects.exists()


def test_deleting_the_target_leaves_the_event_by_default(make_user):
    alice = make_user("alice")
    order = Group.objects.create(name="order")
    event = notify(alice, "Order paid", target=order)
    order.delete()
    event = Event.objects.get(pk=event.pk)
    assert event.target is None  # the reference dangles; the notification stays
    assert event.target_object_id != ""


def test_forget_on_delete_clears_the_reference(make_user, forget_groups):
    alice = make_user("alice")
    order, kept = Group.objects.create(name="order"), Group.objects.create(name="kept")
    about_order = notify(alice, "Order paid", target=order)
    about_kept = notify(alice, "Kept", target=kept)
    pk = order.pk
    order.delete()
    about_order.refresh_from_db()
    assert (about_order.target_content_type_id, about_order.target_object_id) == (None, "")
    assert Event.objects.count() == 2  # the notification itself stays in the inbox
    # A new object that reuses the primary key does not inherit old notifications.
    reused = Group.objects.create(pk=pk, name="reused")
    assert not notifications_about(reused).exists()
    assert list(notifications_about(kept)) == [about_kept]


def test_a_rolled_back_delete_keeps_the_reference(make_user, forget_groups):
    alice = make_user("alice")
    order = Group.objects.create(name="order")
    event = notify(alice, "Order paid", target=order)
    with pytest.raises(RuntimeError), transaction.atomic():
        order.delete()
        raise RuntimeError("rollback")
    assert list(notifications_about(Group.objects.get(name="order"))) == [event]


def test_forget_target_by_hand(make_user):
    alice = make_user("alice")
    order = Group.objects.create(name="order")
    notify(alice, "a", target=order)
    notify(alice, "b", target=order)
    assert forget_target(order) == 2
    assert not notifications_about(order).exists()


@pytest.mark.asyncio
async def test_frame_carries_the_target_live_and_in_replay(connect, amake_user):
    alice = await amake_user("alice")
    order = await db(Topic.objects.create)(name="Order 42", slug="order-42")
    sock = await connect(alice)
    event = await db(notify)(alice, "Order 42 paid", target=order)
    frame = await sock.expect("notification")
    assert frame == {
        "type": "notification",
        "id": event.id,
        "title": "Order 42 paid",
        "body": "",
        "url": "",
        "level": "info",
        "topic": None,
        "data": {},
        "created_at": event.created_at.isoformat(),
        "read": False,
        "replay": False,
        "target": {"type": "notifications.topic", "id": str(order.pk)},
    }
    plain = await db(notify)(alice, "No target")
    assert "target" not in await sock.expect("notification")
    later = await connect(alice, cursor=0)
    replayed = await later.notifications(2)
    assert replayed[0] == {**frame, "replay": True}
    assert replayed[1]["id"] == plain.id and "target" not in replayed[1]
    assert await later.expect("replayed") == {"type": "replayed", "count": 2, "complete": True}
