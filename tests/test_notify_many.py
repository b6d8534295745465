"""notify_many(): the batch form of notify() (issue 12)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group

from notifications import Audience, Notification, notify_many
from notifications.models import Event, Recipient, Topic
from notifications.testing import capture_notifications

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.asyncio
async def test_a_batch_is_stored_and_fanned_out_in_id_order(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    editors = await db(Group.objects.create)(name="editors")
    await db(bob.groups.add)(editors)
    a, b, anon = await connect(alice), await connect(bob), await connect()
    items = [
        Notification(alice, "to alice"),
        Notification(editors, "to editors", level="warning", data={"n": 1}),
        Notification("everyone", "to everyone"),
        *[Notification([alice, bob], f"bulk {i}") for i in range(250)],  # two layer messages
    ]
    events = await db(notify_many)(items)
    assert [e.title for e in events[:3]] == ["to alice", "to editors", "to everyone"]
    assert [e.recipient_count for e in events[:4]] == [1, 1, 2, 2]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 253
    got_a = [f["id"] for f in await a.notifications(252, timeout=10)]
    got_b = [f["id"] for f in await b.notifications(252, timeout=10)]
    assert got_a == [ids[0], ids[2], *ids[3:]]
    assert got_b == [ids[1], ids[2], *ids[3:]]
    assert [f["id"] for f in await anon.notifications(1)] == [ids[2]]
    assert await db(Recipient.objects.count)() == 1 + 2 * 250


def test_one_bad_item_stores_nothing(make_user):
    alice = make_user("alice")
    items = [Notification(alice, "fine"), Notification(alice, "bad", data={"v": float("nan")})]
    with pytest.raises(ValueError, match=r"notifications\[1\]: data\.v must be a finite"):
        notify_many(items)
    with pytest.raises(ValueError, match=r"notifications\[0\] is not a Notification"):
        notify_many([{"recipients": alice, "title": "x"}])
    with pytest.raises(ValueError, match="no user with id 999999"):
        notify_many([Notification(Audience(users=[999999]), "x")])
    assert Event.objects.count() == 0


def test_idempotency_keys_in_a_batch(make_user):
    alice = make_user("alice")
    first = notify_many([Notification(alice, "once", idempotency_key="k1")])[0]
    again = notify_many(
        [Notification(alice, "once", idempotency_key="k1"), Notification(alice, "new")]
    )
    assert again[0].pk == first.pk and again[1].title == "new"
    assert Event.objects.count() == 2
    with pytest.raises(ValueError, match="appears twice"):
        notify_many([Notification(alice, "a", idempotency_key="k2")] * 2)


def test_signals_and_test_kit_see_every_event(make_user):
    alice = make_user("alice")
    Topic.objects.create(name="News", slug="news")
    with capture_notifications() as outbox:
        notify_many([Notification(alice, "a"), Notification("news", "b")])
    assert [e.title for e in outbox] == ["a", "b"]
