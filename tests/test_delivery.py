"""Stream guarantees: order, gaps, catch-up, rollback, offline delivery, out-of-order commits."""

from __future__ import annotations

import threading

import pytest
from channels.db import database_sync_to_async as db
from django.db import transaction
from django.test import override_settings

from notifications import notify
from notifications.models import Event
from notifications.realtime.hub import _load_event_messages, get_hub

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

# The hub without a channel layer: only what a test dispatches, or the database poll, arrives.
NO_LAYER = {"CHANNEL_LAYER": "no-such-layer", "POLL_INTERVAL": 60, "GAP_WAIT": 0.05}


async def test_out_of_order_messages_are_delivered_in_id_order(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=NO_LAYER):
        sock = await connect(alice)
        first = await db(notify)(alice, "first")
        second = await db(notify)(alice, "second")
        m1, m2 = await db(_load_event_messages)(after=0, upto=None)
        hub = get_hub()
        await hub.dispatch(m2)  # arrives early: held until id `first` is settled
        assert await sock.nothing(0.01)
        await hub.dispatch(m1)
        assert [f["id"] for f in await sock.notifications(2)] == [first.id, second.id]
        assert hub.horizon == second.id


async def test_missing_lower_id_is_read_from_the_database(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=NO_LAYER):
        sock = await connect(alice)
        first = await db(notify)(alice, "first (its layer message was lost)")
        second = await db(notify)(alice, "second")
        _, m2 = await db(_load_event_messages)(after=0, upto=None)
        await get_hub().dispatch(m2)
        assert [f["id"] for f in await sock.notifications(2)] == [first.id, second.id]


async def test_id_that_never_committed_does_not_block_the_stream(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=NO_LAYER):
        sock = await connect(alice)
        first = await db(notify)(alice, "one")
        gone = await db(notify)(alice, "rolled back (simulated)")
        third = await db(notify)(alice, "three")
        m1, _, m3 = await db(_load_event_messages)(after=0, upto=None)
        await db(Event.objects.filter(pk=gone.pk).delete)()
        hub = get_hub()
        await hub.dispatch(m1)
        await hub.dispatch(m3)
        assert [f["id"] for f in await sock.notifications(2)] == [first.id, third.id]
        assert hub.horizon == third.id


async def test_poll_delivers_events_from_another_process(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS={**NO_LAYER, "POLL_INTERVAL": 0.1}):
        sock = await connect(alice)
        # Stored with no layer message at all, as `manage.py notify` in another process does
        # under the in-memory layer.
        event = await db(notify)(alice, "from cron")
        frame = await sock.expect("notification", timeout=3)
        assert (frame["id"], frame["replay"]) == (event.id, False)


async def test_rollback_publishes_and_stores_nothing(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice)

    def send_then_fail():
        with transaction.atomic():
            notify(alice, "never")
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        await db(send_then_fail)()
    assert await sock.nothing(0.3)
    assert await db(Event.objects.count)() == 0
    kept = await db(notify)(alice, "after the rollback")
    assert (await sock.expect("notification"))["id"] == kept.id


async def test_publish_waits_for_commit(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice)
    stored = threading.Event()
    release = threading.Event()

    def slow_transaction():
        with transaction.atomic():
            notify(alice, "committed later")
            stored.set()
            release.wait(5)

    worker = threading.Thread(target=slow_transaction)
    worker.start()
    await db(stored.wait)(5)
    assert await sock.nothing(0.2)  # stored but not committed: nothing sent
    release.set()
    await db(worker.join)(5)
    assert (await sock.expect("notification"))["title"] == "committed later"


async def test_offline_notification_arrives_once_on_reconnect(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice)
    seen = await db(notify)(alice, "seen live")
    assert (await sock.expect("notification"))["id"] == seen.id
    await sock.close()

    missed = await db(notify)(alice, "sent while offline")
    back = await connect(alice, cursor=seen.id)
    frame = await back.expect("notification")
    assert (frame["id"], frame["replay"]) == (missed.id, True)
    assert await back.expect("replayed") == {"type": "replayed", "count": 1, "complete": True}
    assert await back.nothing(0.3)  # and not a second time live


async def test_out_of_order_commit_is_never_skipped(connect, amake_user):
    """Transaction A takes its id first and commits last; B starts while A is open.

    A client that saw B and resumes from B's id must still get A, and the ids it saw on one
    connection must increase. The design makes B's id wait for A's commit (SQLite's writer
    lock, PostgreSQL's advisory lock), so B's id is always the higher one and is published
    after A's.
    """
    alice = await amake_user("alice")
    live = await connect(alice)
    a_stored, b_started, a_may_commit = threading.Event(), threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def transaction_a():
        with transaction.atomic():
            ids["a"] = notify(alice, "A").id
            a_stored.set()
            a_may_commit.wait(5)

    def transaction_b():
        a_stored.wait(5)
        b_started.set()
        ids["b"] = notify(alice, "B").id

    threads = [threading.Thread(target=transaction_a), threading.Thread(target=transaction_b)]
    for thread in threads:
        thread.start()
    await db(b_started.wait)(5)
    assert await live.nothing(0.3)  # B cannot overtake A while A is open
    a_may_commit.set()
    for thread in threads:
        await db(thread.join)(10)

    received = [f["id"] for f in await live.notifications(2)]
    assert received == sorted(ids.values()) == [ids["a"], ids["b"]]
    # A client that resumes from the highest id it got misses nothing and sees nothing twice.
    resumed = await connect(alice, cursor=received[-1])
    assert await resumed.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
    # One that resumes from before both gets both, in order, once.
    again = await connect(alice, cursor=received[0] - 1)
    assert [f["id"] for f in await again.notifications(2)] == received
    assert (await again.expect("replayed"))["count"] == 2


@pytest.mark.postgres
async def test_postgres_orders_event_commits_with_an_advisory_lock(amake_user):
    from django.db import connection

    from notifications.services import _STREAM_LOCK_KEY

    from .support import require_service

    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "runs on PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )
    alice = await amake_user("alice")
    stored, release = threading.Event(), threading.Event()

    def open_transaction():
        with transaction.atomic():
            notify(alice, "holding the stream lock")
            stored.set()
            release.wait(5)

    def advisory_locks() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = %s",
                [_STREAM_LOCK_KEY],
            )
            return cursor.fetchone()[0]

    worker = threading.Thread(target=open_transaction)
    worker.start()
    await db(stored.wait)(5)
    try:
        assert await db(advisory_locks)() == 1
    finally:
        release.set()
        await db(worker.join)(5)
    assert await db(advisory_locks)() == 0


async def test_recipient_lists_too_long_to_inline_are_looked_up(connect, amake_user):
    """Past MAX_INLINE_RECIPIENTS the message carries no user list: the hub asks the
    database which of its own users are recipients, and copes with having none."""
    from notifications import Audience
    from notifications.models import Topic

    alice, bob = await amake_user("alice"), await amake_user("bob")
    await db(Topic.objects.create)(name="News", slug="news")
    with override_settings(NOTIFICATIONS={"MAX_INLINE_RECIPIENTS": 1}):
        anon = await connect()  # follows the topic; no signed-in socket here yet
        await anon.send({"type": "subscribe", "topic": "news"})
        await anon.expect("subscribed")
        both = await db(lambda: notify(Audience(users=[alice, bob], topic="news"), "both"))()
        assert (await anon.expect("notification"))["id"] == both.id
        sock = await connect(alice)
        event = await db(notify)([alice, bob], "to two users")
        assert (await sock.expect("notification"))["id"] == event.id
