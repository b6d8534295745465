"""The WebSocket protocol through WebsocketCommunicator: every frame type and error code."""

from __future__ import annotations

import json
import re

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.test import override_settings

from notifications import Audience, notify
from notifications.models import Subscription, Topic

from .support import Socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


SOCKET_ID = re.compile(r"c[0-9]+\.[0-9a-f]{6}\Z")


async def test_hello_anonymous(connect):
    sock = await connect()
    # `socket` is an extension (docs/api.md): this socket's id, unique across processes.
    assert SOCKET_ID.match(sock.hello.pop("socket"))
    assert sock.hello == {"type": "hello", "protocol": 1, "user": None, "unread": None, "cursor": 0}


async def test_hello_signed_in_counts_unread_and_carries_cursor(connect, amake_user):
    alice = await amake_user("alice")
    first = await db(notify)(alice, "one")
    await db(notify)(alice, "two")
    sock = await connect(alice)
    assert SOCKET_ID.match(sock.hello.pop("socket"))
    assert sock.hello == {
        "type": "hello",
        "protocol": 1,
        "user": "alice",
        "unread": 2,
        "cursor": first.id + 1,
    }


async def test_live_notification_frame_is_exact(connect, amake_user):
    alice = await amake_user("alice")
    topic = await db(Topic.objects.create)(name="Billing", slug="billing")
    sock = await connect(alice)
    event = await db(notify)(
        alice,
        "Paid",
        body="Invoice 7",
        url="/invoices/7",
        level="success",
        topic=topic,
        data={"invoice": 7},
    )
    frame = await sock.expect("notification")
    assert frame == {
        "type": "notification",
        "id": event.id,
        "title": "Paid",
        "body": "Invoice 7",
        "url": "/invoices/7",
        "level": "success",
        "topic": "billing",
        "data": {"invoice": 7},
        "created_at": event.created_at.isoformat(),
        "read": False,
        "replay": False,
    }


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["notifications.v1"], "notifications.v1"),
        (["x", "notifications.v1"], "notifications.v1"),
        (None, None),
        (["chat"], None),
    ],
)
async def test_subprotocol_selection(offered, selected):
    sock = Socket(subprotocols=offered)
    connected, subprotocol = await sock.communicator.connect(timeout=5)
    assert connected
    assert subprotocol == selected
    assert (await sock.expect("hello"))["protocol"] == 1
    await sock.close()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:8000", True),
        ("https://127.0.0.1:9443", True),  # allowed host, any scheme and port
        ("https://app.example.com", True),  # NOTIFICATIONS_ALLOWED_ORIGINS entry
        ("https://app.example.com:8443", False),  # same host, other port: not that entry
        ("https://evil.example.net", False),
        ("null", False),
        ("not a url", False),
        (None, True),  # not a browser
    ],
)
async def test_origin_check(origin, allowed):
    with override_settings(NOTIFICATIONS={"ALLOWED_ORIGINS": ["https://app.example.com"]}):
        sock = Socket(origin=origin)
        connected, _ = await sock.communicator.connect(timeout=5)
        assert connected is allowed
        if connected:
            await sock.close()


async def test_missing_origin_refused_when_configured():
    with override_settings(NOTIFICATIONS={"ALLOW_MISSING_ORIGIN": False}):
        sock = Socket(origin=None)
        connected, _ = await sock.communicator.connect(timeout=5)
        assert connected is False


async def test_targeted_event_reaches_only_its_user(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    a, b, anon = await connect(alice), await connect(bob), await connect()
    event = await db(notify)(alice, "for alice")
    assert (await a.expect("notification"))["id"] == event.id
    assert await b.nothing()
    assert await anon.nothing()


async def test_audiences(connect, amake_user):
    staff = await amake_user("staff", is_staff=True)
    member = await amake_user("member")
    plain = await amake_user("plain")
    editors = await db(Group.objects.create)(name="editors")
    await db(member.groups.add)(editors)
    s, m, p, anon = (
        await connect(staff),
        await connect(member),
        await connect(plain),
        await connect(),
    )

    async def receivers(recipients):
        event = await db(notify)(recipients, "x")
        got = []
        for name, sock in (("staff", s), ("member", m), ("plain", p), ("anon", anon)):
            if not await sock.nothing(0.2):
                frame = await sock.expect("notification")
                assert frame["id"] == event.id
                got.append(name)
        return got

    assert await receivers("everyone") == ["staff", "member", "plain", "anon"]
    assert await receivers(Audience(reach="authenticated")) == ["staff", "member", "plain"]
    assert await receivers(Audience(reach="staff")) == ["staff"]
    assert await receivers(editors) == ["member"]
    assert await receivers(Audience(users=[plain], groups=[editors])) == ["member", "plain"]


async def test_topic_subscribers_and_unsubscribe(connect, amake_user):
    alice = await amake_user("alice")
    await db(Topic.objects.create)(name="News", slug="news")
    sock, anon = await connect(alice), await connect()
    await sock.send({"type": "subscribe", "topic": "news", "ref": 1})
    assert await sock.expect("subscribed") == {"type": "subscribed", "topic": "news", "ref": 1}
    await anon.send({"type": "subscribe", "topic": "news"})
    assert await anon.expect("subscribed") == {"type": "subscribed", "topic": "news"}
    assert await db(Subscription.objects.filter(user=alice, topic__slug="news").exists)()

    event = await db(notify)("news", "headline")
    assert (await sock.expect("notification"))["id"] == event.id
    assert (await anon.expect("notification"))["topic"] == "news"

    await sock.send({"type": "unsubscribe", "topic": "news", "ref": "u"})
    assert await sock.expect("unsubscribed") == {
        "type": "unsubscribed",
        "topic": "news",
        "ref": "u",
    }
    await sock.send({"type": "unsubscribe", "topic": "news"})  # idempotent
    assert await sock.expect("unsubscribed") == {"type": "unsubscribed", "topic": "news"}
    await db(notify)("news", "second")
    assert (await anon.expect("notification"))["title"] == "second"
    assert await sock.nothing()


async def test_subscribe_errors(connect, amake_user):
    alice = await amake_user("alice")
    await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    sock, anon = await connect(alice), await connect()
    for s in (sock, anon):
        await s.send({"type": "subscribe", "topic": "secret", "ref": 5})
        assert await s.expect("error") == {
            "type": "error",
            "code": "forbidden",
            "message": "topic 'secret' is private",
            "ref": 5,
        }
        await s.send({"type": "subscribe", "topic": "missing"})
        assert (await s.expect("error"))["code"] == "not_found"
        await s.send({"type": "subscribe", "topic": "Not a slug!"})
        assert (await s.expect("error"))["code"] == "bad_request"
    # Nothing was joined: a private topic event does not reach them.
    await db(notify)("secret", "private news")
    assert await sock.nothing()
    assert await anon.nothing()


async def test_private_topic_for_group_members(connect, amake_user):
    alice = await amake_user("alice")
    team = await db(Group.objects.create)(name="team")
    topic = await db(Topic.objects.create)(name="Ops", slug="ops", is_public=False)
    await db(topic.groups.add)(team)
    await db(alice.groups.add)(team)
    sock = await connect(alice)
    await sock.send({"type": "subscribe", "topic": "ops"})
    await sock.expect("subscribed")
    event = await db(notify)(topic, "page")
    assert (await sock.expect("notification"))["id"] == event.id


async def test_subscribe_with_cursor_replays_topic_events(connect, amake_user):
    await db(Topic.objects.create)(name="News", slug="news")
    old = await db(notify)("news", "old")
    newer = await db(notify)("news", "newer")
    await db(notify)("everyone", "not news")
    anon = await connect()
    await anon.send({"type": "subscribe", "topic": "news", "cursor": old.id, "ref": "s"})
    frame = await anon.expect("notification")
    assert (frame["id"], frame["replay"]) == (newer.id, True)
    assert await anon.expect("subscribed") == {"type": "subscribed", "topic": "news", "ref": "s"}


async def test_replay_on_connect(connect, amake_user):
    alice = await amake_user("alice")
    seen = await db(notify)(alice, "seen")
    missed = [await db(notify)(alice, f"missed {i}") for i in range(3)]
    sock = await connect(alice, cursor=seen.id)
    frames = await sock.notifications(3)
    assert [f["id"] for f in frames] == [e.id for e in missed]
    assert all(f["replay"] and not f["read"] for f in frames)
    assert await sock.expect("replayed") == {"type": "replayed", "count": 3, "complete": True}
    live = await db(notify)(alice, "live")
    frame = await sock.expect("notification")
    assert (frame["id"], frame["replay"]) == (live.id, False)


async def test_replay_nothing_missed_and_cursor_ahead(connect, amake_user):
    alice = await amake_user("alice")
    event = await db(notify)(alice, "x")
    sock = await connect(alice, cursor=event.id)
    assert await sock.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
    # A cursor above hello.cursor (the client saw more on another process) replays nothing,
    # and live events at or below it are not shown again.
    ahead = await connect(alice, cursor=event.id + 1)
    assert await ahead.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
    duplicate = await db(notify)(alice, "already seen elsewhere")
    assert duplicate.id == event.id + 1
    assert (await sock.expect("notification"))["id"] == duplicate.id
    assert await ahead.nothing()
    after = await db(notify)(alice, "new")
    assert (await ahead.expect("notification"))["id"] == after.id


async def test_replay_limit_sets_complete_false(connect, amake_user):
    alice = await amake_user("alice")
    events = [await db(notify)(alice, f"n{i}") for i in range(5)]
    with override_settings(NOTIFICATIONS={"REPLAY_LIMIT": 3}):
        sock = await connect(alice, cursor=0)
        frames = await sock.notifications(3)
        assert [f["id"] for f in frames] == [e.id for e in events[:3]]  # oldest first
        assert await sock.expect("replayed") == {"type": "replayed", "count": 3, "complete": False}


async def test_replay_marks_read_state(connect, amake_user):
    alice = await amake_user("alice")
    first = await db(notify)(alice, "a")
    await db(notify)(alice, "b")
    from notifications.services import mark_read

    await db(mark_read)(alice, [first.id])
    sock = await connect(alice, cursor=0)
    frames = await sock.notifications(2)
    assert [f["read"] for f in frames] == [True, False]
    assert sock.hello["unread"] == 1


async def test_resume_frame(connect, amake_user):
    alice = await amake_user("alice")
    event = await db(notify)(alice, "missed")
    sock = await connect(alice)
    await sock.send({"type": "resume", "cursor": event.id - 1, "ref": 9})
    assert (await sock.expect("notification"))["id"] == event.id
    assert await sock.expect("replayed") == {
        "type": "replayed",
        "count": 1,
        "complete": True,
        "ref": 9,
    }
    # Ids on one connection strictly increase: resuming again sends nothing twice.
    await sock.send({"type": "resume", "cursor": 0})
    assert await sock.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}


async def test_anonymous_sockets_resuming_alike_share_one_replay_read(
    connect, amake_user, monkeypatch
):
    """After a restart every visitor resumes from the same cursor: the hub reads that public
    replay once, and each socket still gets exactly the missed events, then `replayed`."""
    from notifications.realtime import hub as hub_module

    reads = []
    real = hub_module.load_replay

    def counted(*args, **kwargs):
        reads.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub_module, "load_replay", counted)
    seen = await db(notify)("everyone", "seen")
    await db(notify)(await amake_user("alice"), "not for visitors")
    missed = [await db(notify)("everyone", f"missed {i}") for i in range(3)]
    sockets = [await connect(cursor=seen.id) for _ in range(10)]
    for sock in sockets:
        frames = await sock.notifications(3)
        assert [(f["id"], f["replay"], f["read"]) for f in frames] == [
            (e.id, True, False) for e in missed
        ]
        assert await sock.expect("replayed") == {"type": "replayed", "count": 3, "complete": True}
    assert len(reads) == 1
    # Another range is another read; a socket that follows a topic does not share.
    other = await connect(cursor=seen.id + 1)
    assert [f["id"] for f in await other.notifications(3)] == [e.id for e in missed]
    assert (await other.expect("replayed"))["count"] == 3
    assert len(reads) == 2


async def test_anonymous_replay_covers_everyone_only(connect, amake_user):
    alice = await amake_user("alice")
    await db(notify)(alice, "private")
    public = await db(notify)("everyone", "public")
    anon = await connect(cursor=0)
    assert (await anon.expect("notification"))["id"] == public.id
    assert (await anon.expect("replayed"))["count"] == 1


async def test_read_and_read_all_update_every_connection(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    one = await db(notify)(alice, "one")
    two = await db(notify)(alice, "two")
    bobs = await db(notify)(bob, "bob's")
    first, second = await connect(alice), await connect(alice)
    assert first.hello["unread"] == 2

    await first.send({"type": "read", "ids": [one.id, bobs.id], "ref": "r1"})
    assert await first.expect("unread") == {"type": "unread", "count": 1, "ref": "r1"}
    assert await second.expect("unread") == {"type": "unread", "count": 1}
    assert await first.nothing()

    await second.send({"type": "read_all", "ref": 2})
    assert await second.expect("unread") == {"type": "unread", "count": 0, "ref": 2}
    assert await first.expect("unread") == {"type": "unread", "count": 0}
    # Bob's notification was not touched.
    b = await connect(bob)
    assert b.hello["unread"] == 1
    assert two.id > one.id


async def test_read_on_anonymous_socket_is_forbidden(connect):
    anon = await connect()
    await anon.send({"type": "read", "ids": [1], "ref": 1})
    assert (await anon.expect("error"))["code"] == "forbidden"
    await anon.send({"type": "read_all"})
    assert (await anon.expect("error"))["code"] == "forbidden"


async def test_ping_pong(connect):
    sock = await connect()
    await sock.send({"type": "ping"})
    assert await sock.expect("pong") == {"type": "pong"}
    await sock.send({"type": "ping", "ref": "abc"})
    assert await sock.expect("pong") == {"type": "pong", "ref": "abc"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('"text"', "bad_frame"),
        ("{}", "bad_request"),
        ('{"type": 5}', "bad_request"),
        ('{"type": "ping", "ref": 1.5}', "bad_request"),
        ('{"type": "ping", "ref": true}', "bad_request"),
        ('{"type": "resume"}', "bad_request"),
        ('{"type": "resume", "cursor": -1}', "bad_request"),
        ('{"type": "resume", "cursor": "5"}', "bad_request"),
        ('{"type": "read", "ids": "1"}', "bad_request"),
        ('{"type": "read", "ids": [true]}', "bad_request"),
        ('{"type": "subscribe"}', "bad_request"),
        ('{"type": "unsubscribe", "topic": ""}', "bad_request"),
        ('{"type": "explode"}', "unknown_type"),
    ],
)
async def test_bad_frames_get_error_and_socket_stays_usable(connect, amake_user, frame, code):
    alice = await amake_user("alice")
    sock = await connect(alice)
    await sock.send(frame)
    error = await sock.expect("error")
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    event = await db(notify)(alice, "still alive")
    assert (await sock.expect("notification"))["id"] == event.id


async def test_error_echoes_ref(connect):
    sock = await connect()
    await sock.send({"type": "explode", "ref": "x1"})
    assert await sock.expect("error") == {
        "type": "error",
        "code": "unknown_type",
        "message": "unknown frame type 'explode'",
        "ref": "x1",
    }


async def test_binary_frame(connect):
    sock = await connect()
    await sock.communicator.send_to(bytes_data=b"\x00\x01")
    assert (await sock.expect("error"))["code"] == "bad_frame"
    await sock.send({"type": "ping"})
    await sock.expect("pong")


async def test_bad_cursor_in_query(connect):
    sock = Socket(path="/ws/notifications/?cursor=abc")
    connected, _ = await sock.communicator.connect(timeout=5)
    assert connected
    await sock.expect("hello")
    assert (await sock.expect("error"))["code"] == "bad_request"
    await sock.close()


async def test_too_large_frame_closes_1009(connect):
    with override_settings(NOTIFICATIONS={"MAX_FRAME_BYTES": 1024}):
        sock = await connect()
        await sock.send(json.dumps({"type": "ping", "pad": "x" * 2000}))
        assert (await sock.expect("error"))["code"] == "too_large"
        assert await sock.closed() == 1009


async def test_rate_limit_then_close_4429(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(
        NOTIFICATIONS={"RATE_LIMIT_FRAMES": 5, "RATE_LIMIT_WINDOW": 60, "RATE_LIMIT_GRACE": 3}
    ):
        first, second = await connect(alice), await connect(alice)
        for _ in range(3):
            await first.send({"type": "ping"})
            await first.expect("pong")
        for _ in range(2):  # the limit is per user, across connections
            await second.send({"type": "ping"})
            await second.expect("pong")
        await second.send({"type": "ping", "ref": 1})
        assert (await second.expect("error"))["code"] == "rate_limited"
        for _ in range(3):
            await second.send({"type": "ping"})
        assert await second.closed() == 4429


async def test_group_membership_change_applies_to_open_sockets(connect, amake_user):
    alice = await amake_user("alice")
    editors = await db(Group.objects.create)(name="editors")
    await db(notify)(editors, "sent to editors before alice joined")
    sock = await connect(alice)
    assert sock.hello["unread"] == 0
    await db(alice.groups.add)(editors)
    # The group's events are now hers: the count changed for a reason she cannot see.
    assert await sock.expect("unread") == {"type": "unread", "count": 1}
    event = await db(notify)(editors, "for editors")
    assert (await sock.expect("notification"))["id"] == event.id
    await db(editors.user_set.remove)(alice)
    assert await sock.expect("unread") == {"type": "unread", "count": 0}
    await db(notify)(editors, "no longer for alice")
    assert await sock.nothing()


async def test_hello_cursor_is_the_newest_event_the_socket_may_see(connect, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    mine = await db(notify)(alice, "alice's")
    await db(notify)(bob, "bob's, newer")
    assert (await connect(alice)).hello["cursor"] == mine.id
    assert (await connect()).hello["cursor"] == 0  # nothing an anonymous visitor may see
    public = await db(notify)("everyone", "announcement")
    assert (await connect()).hello["cursor"] == public.id


async def test_session_deleted_closes_1008(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS={"SESSION_CHECK_INTERVAL": 0.1}):
        sock = await connect(alice)
        await db(Session.objects.all().delete)()
        assert await sock.closed(timeout=5) == 1008


async def test_deactivated_user_closes_1008(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice)
    alice.is_active = False
    await db(alice.save)()
    assert await sock.closed(timeout=5) == 1008


async def test_connection_cap_per_user(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS={"MAX_CONNECTIONS_PER_USER": 2}):
        await connect(alice)
        await connect(alice)
        with pytest.raises(AssertionError, match="refused"):
            await connect(alice)


async def test_hello_unread_counts_up_to_a_cursor_ahead_of_the_hub(connect, amake_user):
    """The page rendered events the hub has not fanned out yet: they are counted in hello
    (the socket will not bring them live)."""
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS={"CHANNEL_LAYER": "no-such-layer", "POLL_INTERVAL": 60}):
        first = await connect(alice)  # starts the hub at cursor 0
        event = await db(notify)(alice, "rendered in the page, not yet seen by the hub")
        page_cursor = event.id
        sock = await connect(alice, cursor=page_cursor)
        assert sock.hello["cursor"] == 0
        assert sock.hello["unread"] == 1
        assert await sock.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
        assert first.hello["unread"] == 0


async def test_topics_named_on_connect_are_followed_before_the_replay(connect):
    """An anonymous visitor's reconnect: ``?topic=`` makes the replay cover its topics."""
    await db(Topic.objects.create)(name="News", slug="news")
    await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    seen = await db(notify)("everyone", "seen before the drop")
    missed_topic = await db(notify)("news", "news while away")
    missed_all = await db(notify)("everyone", "announcement while away")
    sock = Socket(path="/ws/notifications/?topic=news&topic=secret&topic=nope", cursor=None)
    sock.communicator.scope["query_string"] += f"&cursor={seen.id}".encode()
    assert (await sock.communicator.connect(timeout=5))[0]
    await sock.expect("hello")
    assert (await sock.expect("error"))["code"] == "forbidden"
    assert (await sock.expect("error"))["code"] == "not_found"
    frames = await sock.notifications(2)
    assert [f["id"] for f in frames] == [missed_topic.id, missed_all.id]
    assert (await sock.expect("replayed"))["count"] == 2
    live = await db(notify)("news", "live news")
    assert (await sock.expect("notification"))["id"] == live.id
    await sock.close()


async def test_ids_and_cursors_beyond_64_bits(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice)
    await sock.send({"type": "resume", "cursor": 2**63})
    assert (await sock.expect("error"))["code"] == "bad_request"
    await sock.send({"type": "read", "ids": [2**63, 2**70], "ref": 1})
    assert await sock.expect("unread") == {"type": "unread", "count": 0, "ref": 1}


async def test_unknown_path_is_refused():
    sock = Socket(path="/ws/other/")
    connected, _ = await sock.communicator.connect(timeout=5)
    assert connected is False
