"""Object channels (notifications.channels) and transient pushes (services.push): issue 9."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group
from django.test import override_settings

from notifications import channels
from notifications.channels import channel
from notifications.models import Event
from notifications.realtime.hub import get_hub
from notifications.selectors import inbox_page, unread_count
from notifications.services import notify, push

pytestmark = pytest.mark.django_db(transaction=True)

# Who may follow orders.<id>: a set the tests change, standing in for a site's own query.
OWNERS: dict[int, set[int]] = {}


@pytest.fixture(autouse=True)
def _orders():
    OWNERS.clear()

    @channel("orders.<int:order_id>")
    def can_follow_order(user, order_id: int) -> bool:
        return user.is_authenticated and user.pk in OWNERS.get(order_id, set())

    @channel("boards.<slug:board>.live")
    def anyone(user, board: str) -> bool:
        return board != "closed"

    yield
    channels.unregister("orders.<int:order_id>")
    channels.unregister("boards.<slug:board>.live")


def test_pattern_syntax():
    assert channels.resolve("orders.42")[1] == {"order_id": 42}
    assert channels.resolve("boards.main.live")[1] == {"board": "main"}
    for name in ("orders.x", "orders.", "orders.42.extra", "orders", "other.1", "a" * 101 + ".1"):
        assert channels.resolve(name) is None, name
    for bad in ("nodot", "orders.<float:x>", "orders/<int:x>", "orders.<int:x"):
        with pytest.raises(ValueError):
            channel(bad)(lambda user, **kw: True)


def test_notify_to_a_channel_is_stored_but_in_no_inbox(make_user):
    alice = make_user("alice")
    OWNERS[42] = {alice.pk}
    event = notify("orders.42", "Shipped")
    assert (event.channel, event.recipient_count) == ("orders.42", 0)
    assert list(inbox_page(alice).page) == [] and unread_count(alice) == 0
    with pytest.raises(ValueError, match=r"no channel pattern matches 'orders\.x\.y'"):
        notify("orders.x.y", "x")
    with pytest.raises(ValueError, match="no channel pattern"):
        notify("unknown.1", "x")


@pytest.mark.asyncio
async def test_authorised_user_receives_unauthorised_is_refused(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    OWNERS[42] = {alice.pk}
    mine, theirs = await connect(alice), await connect(bob)
    await mine.send({"type": "subscribe", "topic": "orders.42", "ref": 1})
    assert await mine.expect("subscribed") == {"type": "subscribed", "topic": "orders.42", "ref": 1}
    await theirs.send({"type": "subscribe", "topic": "orders.42", "ref": 2})
    assert await theirs.expect("error") == {
        "type": "error",
        "code": "forbidden",
        "message": "channel 'orders.42' is not open to you",
        "ref": 2,
    }
    event = await db(notify)("orders.42", "Shipped")
    frame = await mine.expect("notification")
    assert (frame["id"], frame["title"], frame["topic"]) == (event.id, "Shipped", None)
    assert await theirs.nothing()


@pytest.mark.asyncio
async def test_subscribe_with_cursor_replays_the_channel_after_authorising(connect, amake_user):
    alice = await amake_user("alice")
    OWNERS[7] = {alice.pk}
    first = await db(notify)("orders.7", "Paid")
    await db(notify)("orders.8", "Someone else's")
    sock = await connect(alice)
    await sock.send({"type": "subscribe", "topic": "orders.7", "cursor": 0})
    replayed = await sock.expect("notification")
    assert (replayed["id"], replayed["replay"]) == (first.id, True)
    await sock.expect("subscribed")


@pytest.mark.asyncio
async def test_authorisation_that_ends_while_subscribed(connect, amake_user):
    alice = await amake_user("alice")
    OWNERS[42] = {alice.pk}
    with override_settings(NOTIFICATIONS={"SESSION_CHECK_INTERVAL": 0.5}):
        sock = await connect(alice)
        await sock.send({"type": "subscribe", "topic": "orders.42"})
        await sock.expect("subscribed")
        OWNERS[42].clear()  # the order changed hands
        # The hub's timer asks the authorisation function again (once per interval).
        assert await sock.expect("unsubscribed", timeout=5) == {
            "type": "unsubscribed",
            "topic": "orders.42",
            "reason": "forbidden",
        }
        await db(notify)("orders.42", "not for alice any more")
        resumed_cursor = sock.hello["cursor"]
        await sock.send({"type": "resume", "cursor": resumed_cursor})
        assert (await sock.expect("replayed"))["count"] == 0


@pytest.mark.asyncio
async def test_anonymous_visitors_follow_open_channels(connect):
    anon = await connect()
    await anon.send({"type": "subscribe", "topic": "boards.main.live"})
    await anon.expect("subscribed")
    await anon.send({"type": "subscribe", "topic": "boards.closed.live", "ref": 1})
    assert (await anon.expect("error"))["code"] == "forbidden"
    event = await db(notify)("boards.main.live", "Moved a card")
    assert (await anon.expect("notification"))["id"] == event.id
    await anon.send({"type": "unsubscribe", "topic": "boards.main.live"})
    assert await anon.expect("unsubscribed") == {
        "type": "unsubscribed",
        "topic": "boards.main.live",
    }
    await db(notify)("boards.main.live", "Another")
    assert await anon.nothing()


# Transient pushes ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_push_reaches_open_sockets_and_is_never_stored(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    editors = await db(Group.objects.create)(name="editors")
    await db(alice.groups.add)(editors)
    a, b, anon = await connect(alice), await connect(bob), await connect()
    await db(push)(editors, "progress", {"done": 3, "of": 10})
    assert await a.expect("push") == {
        "type": "push",
        "event": "progress",
        "data": {"done": 3, "of": 10},
    }
    await db(push)("everyone", "counter", {"online": 3})
    for sock in (a, b, anon):
        assert (await sock.expect("push"))["data"] == {"online": 3}
    assert await db(Event.objects.count)() == 0
    replay = await connect(alice, cursor=0)
    assert await replay.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
    assert replay.hello["unread"] == 0


@pytest.mark.asyncio
async def test_push_to_others_skips_the_senders_socket(connect, amake_user):
    alice = await amake_user("alice")
    OWNERS[1] = {alice.pk}
    editing, other_tab = await connect(alice), await connect(alice)
    for sock in (editing, other_tab):
        await sock.send({"type": "subscribe", "topic": "orders.1"})
        await sock.expect("subscribed")
    await db(push)("orders.1", "editing", {"by": "alice"}, exclude=editing.hello["socket"])
    assert (await other_tab.expect("push"))["event"] == "editing"
    assert await editing.nothing()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("everyone", ""), "event must be"),
        (("everyone", "a b"), "event must be"),
        (("everyone", "x", {"v": float("nan")}), "finite"),
        (("everyone", "x", {"v": "x" * 20_000}), "over 16384 bytes"),
        (("nowhere.1", "x"), "no channel pattern"),
    ],
)
def test_push_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        push(*args)


@pytest.mark.asyncio
async def test_push_waits_for_the_commit(connect):
    from django.db import transaction

    sock = await connect()

    def in_transaction():
        with transaction.atomic():
            push("everyone", "tick")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await db(in_transaction)()
    await get_hub().poll()
    assert await sock.nothing()
