"""Access control (issue 8): access ends with its grant, on open sockets too, and every path
that sends checks a permission. One test (or more) per defect of the issue; each fails on the
code before its fix. The policy they check is docs/architecture.md, "Who may see what"."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import override_settings
from websockets.asyncio.client import connect as ws_connect

from notifications import Audience, notify
from notifications.models import Broadcast, Event, Reach, Subscription, Topic
from notifications.realtime.hub import get_hub

from .server import ServerProcess
from .support import Socket, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
# The hub's periodic session check, fast enough that "within 5 s" is checked with margin.
FAST_CHECK = {"SESSION_CHECK_INTERVAL": 0.5}


def _grant(user, codename: str) -> None:
    user.user_permissions.add(Permission.objects.get(codename=codename))


async def _marker_next(sock: Socket, user, expected_before: list[int] = ()) -> None:
    """Send a marker to ``user`` and check that the socket's next notifications are
    ``expected_before`` and then the marker (fan-out is in id order, so nothing else was
    delivered in between)."""
    marker = await db(notify)(user, "marker")
    frames = [f for f in [await sock.receive(5) for _ in range(len(expected_before) + 1)]]
    ids = [f["id"] for f in frames if f["type"] == "notification"]
    assert ids == [*expected_before, marker.id], frames


async def _skip_unread(sock: Socket) -> None:
    """The membership reload's ``unread`` frame (the count changed for a reason the client
    cannot see), within 5 s of the change."""
    assert (await sock.expect("unread", timeout=5))["type"] == "unread"


# Defect 1: a view-only staff user could send through the admin action ---------------------------


ADMIN_LIST = "/admin/notifications/broadcast/"


@pytest.mark.parametrize("perms", [["view_broadcast"], ["view_broadcast", "change_broadcast"]])
def test_staff_without_send_permission_cannot_send_with_the_action(client, make_user, perms):
    staff = make_user("staff", is_staff=True)
    for codename in perms:
        _grant(staff, codename)
    broadcast = Broadcast.objects.create(title="to everyone", audience="everyone")
    client.force_login(staff)
    listing = client.get(ADMIN_LIST)
    assert listing.status_code == 200 and b"send_selected" not in listing.content
    response = client.post(
        ADMIN_LIST, {"action": "send_selected", "_selected_action": [broadcast.pk]}
    )
    assert response.status_code in (200, 302)
    broadcast.refresh_from_db()
    assert broadcast.sent_at is None and Event.objects.count() == 0


def test_staff_without_send_permission_cannot_send_from_the_form(client, make_user):
    staff = make_user("staff", is_staff=True)
    for codename in ("view_broadcast", "add_broadcast", "change_broadcast"):
        _grant(staff, codename)
    client.force_login(staff)
    response = client.post(
        "/admin/notifications/broadcast/add/",
        {
            "title": "x",
            "body": "",
            "url": "",
            "level": "info",
            "audience": "everyone",
            "send_now": "on",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert b"notifications.send_broadcast" in response.content  # said, not silently dropped
    broadcast = Broadcast.objects.get()  # the draft is kept: drafts need add/change only
    assert broadcast.sent_at is None and Event.objects.count() == 0


def test_send_permission_allows_the_action(client, make_user):
    staff = make_user("sender", is_staff=True)
    for codename in ("view_broadcast", "send_broadcast"):
        _grant(staff, codename)
    broadcast = Broadcast.objects.create(title="to everyone", audience="everyone")
    client.force_login(staff)
    client.post(ADMIN_LIST, {"action": "send_selected", "_selected_action": [broadcast.pk]})
    broadcast.refresh_from_db()
    assert broadcast.sent_by == staff and Event.objects.count() == 1


# Defect 2: a subscription acted as a grant -------------------------------------------------------


@pytest.mark.asyncio
async def test_leaving_the_group_ends_a_private_topic_for_good(connect, amake_user):
    alice = await amake_user("alice")
    staff = await db(Group.objects.create)(name="staff-room")
    room = await db(Topic.objects.create)(name="Room", slug="room", is_public=False)
    await db(room.groups.add)(staff)
    await db(alice.groups.add)(staff)
    before = await db(notify)(room, "while a member")
    sock = await connect(alice)
    await sock.send({"type": "subscribe", "topic": "room", "ref": 1})  # stores a Subscription
    assert await sock.expect("subscribed") == {"type": "subscribed", "topic": "room", "ref": 1}
    assert await db(Subscription.objects.filter(user=alice, topic=room).exists)()
    await db(alice.groups.remove)(staff)
    await _skip_unread(sock)
    await db(notify)(room, "after leaving")
    await _marker_next(sock, alice)  # live: nothing of the topic
    replay = await connect(alice, cursor=0)
    frames = [await replay.receive() for _ in range(2)]
    assert [f["type"] for f in frames] == ["notification", "replayed"]  # the marker only
    assert frames[0]["title"] == "marker" and before.id not in [f.get("id") for f in frames]
    await sock.send({"type": "subscribe", "topic": "room", "ref": 2})
    assert (await sock.expect("error"))["code"] == "forbidden"


@pytest.mark.asyncio
async def test_losing_view_private_topics_ends_the_topic(connect, amake_user):
    auditor = await amake_user("auditor", is_staff=True)
    await db(_grant)(auditor, "view_private_topics")
    auditor = await db(User.objects.get)(pk=auditor.pk)
    secret = await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    sock = await connect(auditor)
    await sock.send({"type": "subscribe", "topic": "secret"})
    await sock.expect("subscribed")
    first = await db(notify)(secret, "one")
    assert (await sock.expect("notification"))["id"] == first.id
    perm = await db(Permission.objects.get)(codename="view_private_topics")
    await db(auditor.user_permissions.remove)(perm)
    await _skip_unread(sock)
    await db(notify)(secret, "two")
    await _marker_next(sock, auditor)


# Defect 3: staff could read every private topic's whole history -----------------------------------


@pytest.mark.asyncio
async def test_staff_alone_cannot_read_private_topics(connect, amake_user):
    staff = await amake_user("staff", is_staff=True)
    secret = await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    await db(notify)(secret, "history")
    sock = await connect(staff, cursor=0)
    assert await sock.expect("replayed") == {"type": "replayed", "count": 0, "complete": True}
    await sock.send({"type": "subscribe", "topic": "secret", "cursor": 0, "ref": "s"})
    assert await sock.expect("error") == {
        "type": "error",
        "code": "forbidden",
        "message": "topic 'secret' is private",
        "ref": "s",
    }


@pytest.mark.asyncio
async def test_view_private_topics_reads_a_private_topics_history_once_followed(
    connect, amake_user
):
    auditor = await amake_user("auditor", is_staff=True)
    await db(_grant)(auditor, "view_private_topics")
    secret = await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    history = await db(notify)(secret, "history")
    sock = await connect(auditor)
    await sock.send({"type": "subscribe", "topic": "secret", "cursor": 0})
    assert (await sock.expect("notification"))["id"] == history.id
    await sock.expect("subscribed")


# Defect 4: a password change left open sockets live -----------------------------------------------


def _change_password_keeping(session_cookie_value: str, user) -> None:
    """What Django's PasswordChangeView does: set the password, then renew the auth hash in
    the session that made the change (update_session_auth_hash), which stays signed in."""
    from django.conf import settings
    from django.contrib.auth import HASH_SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    user.set_password("a new password")
    user.save()
    key = session_cookie_value.split("=", 1)[1]
    assert key and settings.SESSION_ENGINE.endswith("db")
    store = SessionStore(key)
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()


@pytest.mark.asyncio
async def test_password_change_closes_other_sessions_sockets_1008(amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=FAST_CHECK):
        cookies = [await db(session_cookie)(alice) for _ in range(2)]
        other, changer = Socket(cookie=cookies[0]), Socket(cookie=cookies[1])
        for sock in (other, changer):
            assert (await sock.communicator.connect(timeout=5))[0]
            await sock.expect("hello")
        await db(_change_password_keeping)(cookies[1], alice)
        assert await other.closed(timeout=5) == 1008
        # The session that changed the password stays signed in, and so does its socket.
        await _marker_next(changer, alice)
        await changer.close()


# Defect 5: changes made without a signal went unnoticed -------------------------------------------


@pytest.mark.asyncio
async def test_staff_demoted_without_a_signal_stops_receiving_staff_events(connect, amake_user):
    staff = await amake_user("staff", is_staff=True)
    with override_settings(NOTIFICATIONS=FAST_CHECK):
        sock = await connect(staff)
        first = await db(notify)(Audience(reach=Reach.STAFF), "staff only")
        assert (await sock.expect("notification"))["id"] == first.id
        await db(User.objects.filter(pk=staff.pk).update)(is_staff=False)
        await _skip_unread(sock)  # the session check found it and reloaded the socket
        await db(notify)(Audience(reach=Reach.STAFF), "staff only, later")
        await _marker_next(sock, staff)
        replay = await connect(staff, cursor=0)
        assert [f["title"] for f in await replay.notifications(1)] == ["marker"]


@pytest.mark.asyncio
async def test_deactivated_without_a_signal_closes_1008(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=FAST_CHECK):
        sock = await connect(alice)
        await db(User.objects.filter(pk=alice.pk).update)(is_active=False)
        assert await sock.closed(timeout=5) == 1008


@pytest.mark.asyncio
async def test_superuser_granted_without_a_signal_receives_permission_events(connect, amake_user):
    alice = await amake_user("alice")
    with override_settings(NOTIFICATIONS=FAST_CHECK):
        sock = await connect(alice)
        await db(User.objects.filter(pk=alice.pk).update)(is_superuser=True)
        await _skip_unread(sock)
        event = await db(notify)(await db(Audience)(permission="auth.add_user"), "admins")
        assert (await sock.expect("notification"))["id"] == event.id


# Defect 6: poison data --------------------------------------------------------------------------


def _store_poison() -> Event | None:
    """A row notify() now refuses, written around it (an older version, a data migration),
    or None where the database itself refuses it (PostgreSQL's jsonb: no lone surrogates)."""
    from django.db import DataError, IntegrityError, transaction

    try:
        with transaction.atomic():
            return Event.objects.create(title="poison", reach=Reach.EVERYONE, data={"v": "\ud800"})
    except (DataError, IntegrityError, ValueError):
        assert connection.vendor == "postgresql"
        return None


@pytest.mark.asyncio
async def test_a_row_that_cannot_be_encoded_is_skipped_live_and_on_replay(connect, caplog):
    live = await connect()
    before = await db(notify)("everyone", "before")
    assert (await live.expect("notification"))["id"] == before.id
    poison = await db(_store_poison)()
    if poison is None:
        return  # PostgreSQL refused to store the row at all (asserted in _store_poison)
    after = await db(notify)("everyone", "after")
    await get_hub().poll()  # the poll reads the row the layer never announced
    assert (await live.expect("notification"))["id"] == after.id  # not stuck behind it
    replay = await connect(cursor=0)
    frames = [await replay.receive() for _ in range(4)]
    assert frames[0]["id"] == before.id
    assert frames[1] == {
        "type": "error",
        "code": "unencodable",
        "message": f"notification {poison.id} cannot be encoded and was skipped",
        "id": poison.id,
    }
    assert frames[2]["id"] == after.id
    assert frames[3] == {"type": "replayed", "count": 2, "complete": True}
    # A client resuming from just below the bad row is not blocked by it either.
    resumed = await connect(cursor=poison.id - 1)
    assert [f["type"] for f in [await resumed.receive() for _ in range(3)]] == [
        "error",
        "notification",
        "replayed",
    ]
    assert "cannot be replayed and is skipped" in caplog.text


# Defect 7: non-ASCII digits in the cursor --------------------------------------------------------

BAD_CURSORS = ["%C2%B2", "%E2%91%A0", "%D9%A3", "-1", "1e3", "%201", "9" * 20, "0x10"]


@pytest.mark.asyncio
@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_only_ascii_digits_make_a_cursor(connect, cursor):
    event = await db(notify)("everyone", "x")
    sock = await connect(path=f"/ws/notifications/?cursor={cursor}")
    assert sock.hello["cursor"] == event.id
    assert await sock.expect("error") == {
        "type": "error",
        "code": "bad_request",
        "message": "'cursor' must be a non-negative integer",
    }
    await sock.send({"type": "ping", "ref": 1})
    assert await sock.expect("pong") == {"type": "pong", "ref": 1}


@pytest.mark.server
@pytest.mark.parametrize("server", ["daphne", "uvicorn-websockets-sansio"])
def test_non_ascii_digit_cursor_on_the_real_server(server):
    async def scenario(port: int) -> list[dict]:
        url = f"ws://127.0.0.1:{port}/ws/notifications/?cursor=%C2%B2"
        async with ws_connect(url, origin=f"http://127.0.0.1:{port}") as ws:
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            await ws.send(json.dumps({"type": "ping"}))
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            return frames

    with ServerProcess(server=server) as running:
        frames = asyncio.run(scenario(running.port))
    assert [f["type"] for f in frames] == ["hello", "error", "pong"]
    assert frames[1]["code"] == "bad_request"


# Beyond the list: other entry points -------------------------------------------------------------


def test_cli_refuses_text_that_is_not_unicode(make_user):
    """Bytes that are not UTF-8 in argv reach Python as lone surrogates (surrogateescape):
    `manage.py notify --title $'\\xff'` must fail cleanly, storing nothing."""
    from django.core.management import CommandError, call_command

    make_user("alice")
    with pytest.raises(CommandError, match="title is not valid Unicode"):
        call_command("notify", "--title", "bad \udcff", "--user", "alice")
    with pytest.raises(CommandError, match=r"no permission 'auth\.nope'"):
        call_command("notify", "--title", "x", "--permission", "auth.nope")
    assert Event.objects.count() == 0


def test_admin_form_refuses_nul_characters(client, make_user):
    """PostgreSQL cannot store NUL in text: the admin form refuses it (Django's
    ProhibitNullCharactersValidator) instead of failing with a 500."""
    root = make_user("root", is_staff=True, is_superuser=True)
    client.force_login(root)
    response = client.post(
        "/admin/notifications/broadcast/add/",
        {"title": "a\x00b", "body": "", "url": "", "level": "info", "audience": "everyone"},
    )
    assert response.status_code == 200 and b"Null characters are not allowed" in response.content
    assert Broadcast.objects.count() == 0
