"""Presence (PROTOCOL.md): snapshot() across processes through the database or Redis, the
admin's "Online now" page, the user admin's online column and "Notify selected users"."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.utils import timezone
from websockets.asyncio.client import connect as ws_connect

from notifications import broadcasting, presence
from notifications.models import Broadcast, Event, PresenceProcess

from .faultkit import RedisServer, redis_layers, wait_until
from .server import ServerProcess, manage
from .support import require_service, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"PRESENCE_INTERVAL": 0.1, "PRESENCE_TTL": 1.0}


def need_redis() -> None:
    require_service(
        "redis",
        RedisServer.available(),
        "needs redis-server on PATH to run a private Redis on a free port "
        "(apt-get install redis-server)",
    )


async def until(condition, timeout: float = 5.0):
    """Await a presence state (reports are periodic: there is no frame to await)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await db(presence.snapshot)()
        if condition(value):
            return value
        assert time.monotonic() < deadline, f"presence stayed {value}"
        await asyncio.sleep(0.05)


async def test_snapshot_of_the_hub_through_the_database(connect, amake_user, settings):
    settings.NOTIFICATIONS = FAST
    alice = await amake_user("alice")
    tabs = [await connect(alice), await connect(alice), await connect()]
    snap = await until(lambda s: s["connections"] == 3)
    assert snap == {"users": [alice.pk], "anonymous": 1, "connections": 3}
    await tabs[0].close()
    await tabs[2].close()
    snap = await until(lambda s: s["connections"] == 1)
    assert snap == {"users": [alice.pk], "anonymous": 0, "connections": 1}


async def test_staff_watch_presence_over_their_own_socket(connect, amake_user, settings):
    settings.NOTIFICATIONS = FAST
    root = await amake_user("root", is_staff=True, is_superuser=True)
    alice = await amake_user("alice")
    watcher = await connect(root)
    await watcher.send({"type": "watch_presence", "ref": 7})
    first = await watcher.expect("presence")
    assert first["ref"] == 7 and set(first) == {
        "type",
        "ref",
        "online_users",
        "anonymous",
        "connections",
        "users",
        "users_shown",
        "processes",
    }
    await connect(alice)
    # Pushed after this process's next reports, without asking again.
    deadline = time.monotonic() + 5
    while True:
        frame = await watcher.expect("presence")
        if frame["connections"] == 2:
            break
        assert time.monotonic() < deadline, frame
    assert frame["users"] == ["alice", "root"] and frame["online_users"] == 2
    assert [p["connections"] for p in frame["processes"]] == [2]


async def test_watch_presence_is_for_staff_who_may_view_it(connect, amake_user):
    staff = await amake_user("staff", is_staff=True)  # no view permission on presence
    for sock in (await connect(staff), await connect(await amake_user("alice")), await connect()):
        await sock.send({"type": "watch_presence", "ref": "p"})
        assert await sock.expect("error") == {
            "type": "error",
            "code": "forbidden",
            "message": "presence is for staff who may view it",
            "ref": "p",
        }
        assert await sock.nothing(0.3)


def test_stale_database_reports_drop_out(settings):
    settings.NOTIFICATIONS = FAST
    presence.report(presence.ProcessReport("alive", users=[1, 2], anonymous=1, connections=4))
    presence.report(presence.ProcessReport("other", users=[2, 3], anonymous=2, connections=3))
    assert presence.snapshot() == {"users": [1, 2, 3], "anonymous": 3, "connections": 7}
    PresenceProcess.objects.filter(process="other").update(
        updated_at=timezone.now() - timedelta(seconds=2)
    )
    assert presence.snapshot() == {"users": [1, 2], "anonymous": 1, "connections": 4}
    presence.withdraw("alive")
    assert presence.snapshot() == {"users": [], "anonymous": 0, "connections": 0}


@pytest.mark.redis
def test_snapshot_through_redis_expires_reports(settings):
    need_redis()
    settings.NOTIFICATIONS = FAST
    with RedisServer() as redis, override_settings(CHANNEL_LAYERS=redis_layers(redis.url)):
        assert presence.redis_host() == redis.url
        presence.report(presence.ProcessReport("a", users=[5], anonymous=0, connections=1))
        presence.report(presence.ProcessReport("b", users=[5, 6], anonymous=2, connections=4))
        assert presence.snapshot() == {"users": [5, 6], "anonymous": 2, "connections": 5}
        assert not PresenceProcess.objects.exists()  # Redis, not the database
        presence.withdraw("a")
        assert presence.snapshot()["connections"] == 4
        # Another site on the same Redis (its layer has its own prefix) sees none of it.
        other = redis_layers(redis.url)
        other["default"]["CONFIG"]["prefix"] = "othersite"
        with override_settings(CHANNEL_LAYERS=other):
            assert presence.snapshot() == {"users": [], "anonymous": 0, "connections": 0}
        # "b" stops reporting: it drops out after the TTL.
        wait_until(lambda: presence.snapshot()["connections"] == 0, timeout=3, what="expiry")


@pytest.mark.redis
def test_online_user_ids_survive_a_redis_outage(settings):
    need_redis()
    with RedisServer() as redis:
        url = redis.url
    with override_settings(CHANNEL_LAYERS=redis_layers(url)):  # nothing listens there now
        with pytest.raises(Exception):  # noqa: B017 - redis-py's connection error
            presence.snapshot()
        assert presence.online_user_ids() == set()


@pytest.mark.redis
@pytest.mark.server
async def test_presence_across_server_processes_sharing_redis(amake_user):
    need_redis()
    alice, bob = await amake_user("alice"), await amake_user("bob")
    cookies = [await db(session_cookie)(user) for user in (alice, bob)]
    env = {"NOTIFICATIONS_PRESENCE_INTERVAL": "0.5"}
    with (
        RedisServer() as redis,
        override_settings(CHANNEL_LAYERS=redis_layers(redis.url)),
        ServerProcess(REDIS_URL=redis.url, **env) as first,
        ServerProcess(REDIS_URL=redis.url, **env) as second,
    ):
        async with (
            ws_connect(
                first.ws_url, origin=first.origin, additional_headers={"Cookie": cookies[0]}
            ) as a,
            ws_connect(
                second.ws_url, origin=second.origin, additional_headers={"Cookie": cookies[1]}
            ) as b,
            ws_connect(second.ws_url, origin=second.origin) as anon,
        ):
            for ws in (a, b, anon):
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
            snap = await until(lambda s: s["connections"] == 3)
            assert snap == {"users": sorted([alice.pk, bob.pk]), "anonymous": 1, "connections": 3}
            assert len(await db(presence.processes)()) == 2
            # A process that dies without a word drops out within 5 s.
            second.stop(signal.SIGKILL)
            started = time.monotonic()
            snap = await until(lambda s: s["connections"] == 1, timeout=6)
            assert time.monotonic() - started < 5.5
            assert snap == {"users": [alice.pk], "anonymous": 0, "connections": 1}


@pytest.mark.server
async def test_manage_py_shell_sees_the_servers_connections_on_the_embedded_defaults():
    """PROTOCOL.md: snapshot() answers the same from any process, manage.py shell included
    (here SQLite and the in-memory layer: the reports go through the database)."""
    env = {"NOTIFICATIONS_PRESENCE_INTERVAL": "0.2"}
    code = "from notifications import presence; print(presence.snapshot())"
    with ServerProcess(**env) as server:
        async with ws_connect(server.ws_url, origin=server.origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
            deadline = time.monotonic() + 10
            while True:
                result = await asyncio.to_thread(manage, "shell", "-c", code)
                assert result.returncode == 0, result.stderr
                if "'connections': 1" in result.stdout or time.monotonic() > deadline:
                    break
            assert result.stdout.strip().splitlines()[-1] == (
                "{'users': [], 'anonymous': 1, 'connections': 1}"
            )


# The admin -----------------------------------------------------------------------------------


def test_online_now_page_and_its_json(client, make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    alice = make_user("alice")
    presence.report(presence.ProcessReport("web-1", users=[alice.pk], anonymous=2, connections=3))
    client.force_login(root)
    index = client.get("/admin/").content.decode()
    assert "/admin/notifications/presenceprocess/" in index and "Online now" in index
    page = client.get("/admin/notifications/presenceprocess/")
    html = page.content.decode()
    assert page.status_code == 200 and "web-1" in html and "<li>alice</li>" in html
    data = client.get("/admin/notifications/presenceprocess/snapshot.json").json()
    assert data == {
        "online_users": 1,
        "anonymous": 2,
        "connections": 3,
        "users": ["alice"],
        "users_shown": 1,
        "processes": [{"process": "web-1", "connections": 3, "users": 1, "anonymous": 2}],
    }
    staff = make_user("staff", is_staff=True)  # no permission on presence
    client.force_login(staff)
    assert client.get("/admin/notifications/presenceprocess/").status_code == 403
    assert client.get("/admin/notifications/presenceprocess/snapshot.json").status_code == 403


def test_user_admin_online_column(client, make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    alice = make_user("alice")
    make_user("bob")
    presence.report(presence.ProcessReport("web-1", users=[alice.pk], anonymous=0, connections=1))
    client.force_login(root)
    page = client.get("/admin/auth/user/")
    assert page.status_code == 200
    html = page.content.decode()
    online = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        name = re.search(r'<th class="field-username"><a [^>]*>([^<]+)</a>', row)
        cell = re.search(r'<td class="field-online"><img [^>]*alt="(True|False)"', row)
        if name and cell:
            online[name.group(1)] = cell.group(1) == "True"
    assert online == {"alice": True, "bob": False, "root": False}


def test_notify_selected_users_action(client, make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    alice, bob = make_user("alice"), make_user("bob")
    client.force_login(root)
    selection = {"action": "notify_selected_users", "_selected_action": [alice.pk, bob.pk]}
    page = client.post("/admin/auth/user/", selection)
    assert page.status_code == 200 and b"A notification to 2 active users" in page.content
    response = client.post(
        "/admin/auth/user/",
        {**selection, "apply": "1", "title": "Hello", "level": "info", "url": "javascript:x"},
    )
    assert b"url must be relative or http(s)" in response.content
    response = client.post(
        "/admin/auth/user/",
        {**selection, "apply": "1", "title": "Hello", "body": "there", "level": "success"},
        follow=True,
    )
    broadcast = Broadcast.objects.get()
    assert f"“Hello” to 2 users: sent (broadcast #{broadcast.pk})." in [
        str(m) for m in response.context["messages"]
    ]
    # A broadcast to those users (with its follow-up), sent by the request: two users are
    # few (many go through the background sender, test_admin.py).
    assert broadcast.status == Broadcast.Status.SENT and broadcast.pending_users is None
    event = Event.objects.get()
    assert sorted(event.recipients.values_list("user_id", flat=True)) == [alice.pk, bob.pk]
    assert (event.title, event.body, event.level) == ("Hello", "there", "success")
    assert LogEntry.objects.filter(
        object_id=str(broadcast.pk), change_message__startswith="Notify selected users (users)"
    ).exists()


def test_notify_many_selected_users_goes_through_the_background_sender(client, make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    users = [make_user(f"u{i}") for i in range(3)]
    client.force_login(root)
    fields = {
        "action": "notify_selected_users",
        "select_across": "1",  # "select all": every user of the list, not only this page
        "index": "0",
        "_selected_action": [users[0].pk],
        "apply": "1",
        "title": "To all",
        "level": "info",
    }
    with override_settings(NOTIFICATIONS={"SEND_INLINE_MAX_USERS": 2}):
        response = client.post("/admin/auth/user/", fields, follow=True)
    broadcast = Broadcast.objects.get()
    assert f"“To all” to 4 users: handed to the background sender (broadcast #{broadcast.pk})." in [
        str(m) for m in response.context["messages"]
    ]
    # One row written in the request: the selection is one value until the sender expands it.
    assert broadcast.status == Broadcast.Status.SCHEDULED and len(broadcast.pending_users) == 4
    assert broadcast.users.count() == 0 and Event.objects.count() == 0
    [outcome] = broadcasting.send_due()
    assert outcome.sent
    broadcast.refresh_from_db()
    assert broadcast.pending_users is None and broadcast.users.count() == 4
    assert broadcast.event.recipient_count == 4


def test_notify_selected_users_needs_the_send_permission(client, make_user):
    staff = make_user("staff", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "change_user"]))
    alice = make_user("alice")
    client.force_login(staff)
    listing = client.get("/admin/auth/user/").content.decode()
    assert "notify_selected_users" not in listing
    client.post(
        "/admin/auth/user/",
        {
            "action": "notify_selected_users",
            "_selected_action": [alice.pk],
            "apply": "1",
            "title": "Hello",
            "level": "info",
        },
    )
    assert Event.objects.count() == 0
