"""Bad input and abuse (issue 4, docs/security.md): one test or more per row of the table.

Rows whose outcome depends on the transport (handshake, close codes, frame sizes, timeouts,
the per-process limits) run against the real server: ``daphne project.asgi:application``
started by :class:`tests.server.ServerProcess` with the project's default settings, and a
``websockets`` client or a raw TCP socket. The others use ``WebsocketCommunicator``.
``tests/test_consumer.py`` already covers every error code and close code in-process; this
file does not repeat it.

Rows that do not behave as PROTOCOL.md and issue 4 specify are ``xfail(strict=True)``: the
reason names the defect, and the marker must go when the application is fixed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import secrets
import struct
import time
import unittest
from typing import Any

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.test import override_settings
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from notifications import notify
from notifications.models import ReadMark, Subscription, Topic
from notifications.realtime.origin import origin_allowed
from notifications.selectors import unread_count

from .server import ServerProcess
from .support import Socket, session_cookie
from .test_server import SEED_KEY, handshake

pytestmark = pytest.mark.django_db(transaction=True)
server_test = pytest.mark.server

# The defaults of notifications/conf.py, which project/settings.py (the server's) keeps.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024
DEFAULT_RATE_LIMIT_FRAMES = 50
DEFAULT_RATE_LIMIT_GRACE = 10
DEFAULT_MAX_CONNECTIONS_PER_USER = 50


# Helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(django_db_setup):
    """One real server for the module: the tests use distinct users, so the per-process
    rate limiter and connection counts of one test do not leak into another."""
    with ServerProcess() as running:
        yield running


class LogWatch:
    """The server's log lines from the moment the watch starts, as ``LEVEL logger message``
    (project/settings.py logs ``%(asctime)s %(levelname)s %(name)s %(message)s``)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start = len(server.output())

    def text(self) -> str:
        return self.server.output()[self.start :]

    def lines(self, pattern: str) -> list[str]:
        return [
            line.split(" ", 2)[2]
            for line in self.text().splitlines()
            if re.search(pattern, line) and re.match(r"\d{4}-\d\d-\d\d ", line)
        ]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 5) -> list[str]:
        """The lines matching ``pattern`` (a regex), once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while len(lines := self.lines(pattern)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged {count}x in {timeout}s")
            time.sleep(0.05)  # a log file cannot be awaited
        return lines

    async def until(self, pattern: str, *, count: int = 1, timeout: float = 5) -> list[str]:
        """:meth:`wait_for` without blocking the event loop."""
        async with asyncio.timeout(timeout):
            while len(lines := self.lines(pattern)) < count:
                await asyncio.sleep(0.05)  # a log file cannot be awaited
        return lines


async def recv_frame(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def close_code(ws: ClientConnection, timeout: float = 5) -> tuple[int | None, list[Any]]:
    """Await the server's close; return its code and the frames that came before it."""
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except ConnectionClosed:
            return ws.close_code, frames


async def transport_alive(ws: ClientConnection, timeout: float = 3) -> bool:
    """A WebSocket ping answered by the server (not counted by the rate limiter)."""
    pong = await ws.ping()
    await asyncio.wait_for(pong, timeout)
    return True


@pytest.fixture
async def open_ws():
    """``await open_ws(server, cookie=None)`` -> (connection, hello); closed at teardown."""
    opened: list[ClientConnection] = []

    async def opener(server: ServerProcess, cookie: str | None = None, **kwargs: Any):
        ws = await ws_connect(
            server.ws_url,
            origin=server.origin,
            additional_headers={"Cookie": cookie} if cookie else {},
            open_timeout=5,
            close_timeout=2,
            max_size=None,
            **kwargs,
        )
        opened.append(ws)
        hello = await recv_frame(ws)
        assert hello["type"] == "hello", hello
        return ws, hello

    yield opener
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


def upgrade_request(port: int, origin: str | None = None) -> bytes:
    lines = [
        "GET /ws/notifications/ HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {SEED_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket connection, past the 101 and the hello frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    first, length = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x81 and length < 126, (first, length)  # the hello, one small text frame
    assert json.loads(await reader.readexactly(length))["type"] == "hello"
    return reader, writer


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None):
    """A masked client frame (RFC 6455 5.2); ``length`` may announce more than is sent."""
    size = len(payload) if length is None else length
    return (
        bytes([(0x80 if fin else 0) | opcode, 0x80 | 127])
        + struct.pack("!Q", size)
        + b"\0\0\0\0"  # a zero mask leaves the payload as is
        + payload
    )


async def dropped_within(reader: asyncio.StreamReader, timeout: float) -> float | None:
    """Seconds until the server ends the TCP connection (EOF or reset), None if it did not."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def logout(port: int, cookie: str) -> http.client.HTTPResponse:
    """POST /accounts/logout/ with the session cookie and a CSRF token, as a browser would."""
    token = secrets.token_hex(16)  # 32 characters: an unmasked CSRF secret
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request(
        "POST",
        "/accounts/logout/",
        headers={"Cookie": f"{cookie}; csrftoken={token}", "X-CSRFToken": token},
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


async def until_notification(ws: ClientConnection, event_id: int) -> list[dict[str, Any]]:
    """The frames up to and including the notification ``event_id`` (ids arrive in order)."""
    frames = []
    while True:
        frame = await recv_frame(ws)
        frames.append(frame)
        if frame["type"] == "notification" and frame["id"] == event_id:
            return frames


# Handshake: Origin --------------------------------------------------------------------------------


@server_test
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example:8000",
        "chrome-extension://abcdefghijklmnop",
    ],
)
def test_foreign_origin_refused_with_403_before_accept_and_logged(server, origin):
    """Cross-site WebSocket hijacking: look-alike hosts too. (Plain foreign origins:
    tests/test_server.py::test_foreign_origin_gets_403.)"""
    log = LogWatch(server)
    head = handshake(server.port, origin=origin)
    assert head.split("\r\n")[0] == "HTTP/1.1 403 Access denied"
    assert log.wait_for("ws.reject") == [
        f"WARNING notifications.realtime ws.reject origin={origin!r} client=127.0.0.1"
    ]
    assert log.lines("ws.connect") == []  # refused before the consumer ran


@server_test
def test_missing_origin_accepted_by_default(server):
    log = LogWatch(server)
    head = handshake(server.port, origin=None)
    assert head.startswith("HTTP/1.1 101 "), head
    assert re.fullmatch(
        r"DEBUG notifications\.realtime ws\.connect c\d+\.[0-9a-f]+ user=None client=127\.0\.0\.1 "
        r"cursor=None writer=\w+",
        log.wait_for("ws.connect")[0],
    )
    assert log.lines("ws.reject") == []


@pytest.mark.asyncio
async def test_missing_origin_refused_when_disallowed_and_logged():
    """The server reads NOTIFICATIONS from project/settings.py only, so this setting is shown
    in-process. (The refusal alone:
    tests/test_consumer.py::test_missing_origin_refused_when_configured.)"""
    with (
        override_settings(NOTIFICATIONS={"ALLOW_MISSING_ORIGIN": False}),
        unittest.TestCase().assertLogs("notifications.realtime", "WARNING") as logs,
    ):
        sock = Socket(origin=None, client=("192.0.2.10", 50123))
        connected, _ = await sock.communicator.connect(timeout=5)
        assert connected is False
    assert logs.output == ["WARNING:notifications.realtime:ws.reject origin=None client=192.0.2.10"]


def test_ipv6_origin_of_an_allowed_host_is_accepted():
    with override_settings(ALLOWED_HOSTS=["[::1]"]):
        assert origin_allowed("http://[::1]:8000") is True


# Frames: bad input --------------------------------------------------------------------------------


@server_test
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("{not json", ("bad_json", "the frame is not valid JSON")),
        ("[1, 2]", ("bad_frame", "a frame must be a JSON object")),
        ('{"type": "explode"}', ("unknown_type", "unknown frame type 'explode'")),
        ('{"type": "resume"}', ("bad_request", "'cursor' must be a non-negative integer")),
        (b"\x00\x01binary", ("bad_frame", "binary frames are not supported")),
    ],
    ids=["not-json", "not-an-object", "unknown-type", "missing-field", "binary"],
)
async def test_bad_input_gets_an_error_and_the_socket_still_delivers(
    server, open_ws, amake_user, frame, expected
):
    alice = await amake_user("alice")
    ws, _ = await open_ws(server, await db(session_cookie)(alice))
    await ws.send(frame)
    code, message = expected
    assert await recv_frame(ws) == {"type": "error", "code": code, "message": message}
    event = await db(notify)(alice, "still delivered")  # reaches the server by its poll
    frame = await recv_frame(ws)
    assert (frame["type"], frame["id"], frame["title"]) == ("notification", event.id, event.title)


@server_test
@pytest.mark.asyncio
async def test_lone_surrogate_ref_is_refused_without_closing(server, open_ws):
    ws, _ = await open_ws(server)
    await ws.send('{"type": "ping", "ref": "\\ud800"}')
    answer = await recv_frame(ws)
    # Either answer keeps the protocol: refused as a bad ref, or echoed as a JSON escape.
    assert answer in (
        {"type": "pong", "ref": "\ud800"},
        {"type": "error", "code": "bad_request", "message": answer.get("message")},
    )
    assert isinstance(answer.get("message", ""), str)
    await ws.send('{"type": "ping", "ref": 2}')
    assert await recv_frame(ws) == {"type": "pong", "ref": 2}


# Frames: size -------------------------------------------------------------------------------------


@server_test
@pytest.mark.asyncio
async def test_frame_over_the_size_limit_closes_1009(server, open_ws):
    ws, _ = await open_ws(server)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * (70 * 1024)}))
    code, frames = await close_code(ws)
    assert frames == [
        {
            "type": "error",
            "code": "too_large",
            "message": f"frames are limited to {DEFAULT_MAX_FRAME_BYTES} bytes",
        }
    ]
    assert code == 1009


@server_test
@pytest.mark.asyncio
async def test_frame_over_the_size_limit_ends_only_that_socket(server, open_ws):
    bystander, _ = await open_ws(server)
    ws, _ = await open_ws(server)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * (70 * 1024)}))
    code, frames = await close_code(ws)
    assert [f["code"] for f in frames] == ["too_large"]
    assert code is not None  # the code itself: test_frame_over_the_size_limit_closes_1009
    await bystander.send('{"type": "ping", "ref": "b"}')
    assert await recv_frame(bystander) == {"type": "pong", "ref": "b"}
    _, hello = await open_ws(server)
    assert hello["protocol"] == 1


@server_test
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "frames",
    [
        # One text frame whose header announces 1 GiB; no payload follows.
        [client_frame(0x1, b"", length=2**30)],
        # A message in 200 KiB fragments that never ends (no FIN): 2 MiB in all.
        [client_frame(0x1, b"x" * 204800, fin=False)]
        + [client_frame(0x0, b"x" * 204800, fin=False)] * 9,
    ],
    ids=["1-GiB-header", "endless-fragments"],
)
async def test_frames_beyond_the_transport_limit_are_dropped_unbuffered(server, open_ws, frames):
    """Memory is bounded before the application sees anything: daphne's
    --websocket-max-frame-size and --websocket-max-message-size (1 MiB each by default)
    drop the TCP connection as soon as a header or a fragment goes past them."""
    reader, writer = await raw_websocket(server.port)
    try:
        for frame in frames:
            writer.write(frame)
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # dropped while we were still sending
    assert await dropped_within(reader, 5) is not None
    writer.close()
    _, hello = await open_ws(server)  # the server is fine
    assert hello["type"] == "hello"


# Topics and read state ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscribe_to_private_or_another_users_stream_joins_nothing(connect, amake_user):
    """(Private and missing topics for anonymous visitors too, and malformed slugs:
    tests/test_consumer.py::test_subscribe_errors.) There is no per-user stream to subscribe
    to: a user's own events follow the session, and names of users are not topics."""
    alice, bob = await amake_user("alice"), await amake_user("bob")
    secret = await db(Topic.objects.create)(name="Secret", slug="secret", is_public=False)
    await db(secret.members.add)(bob)  # staff's grant (a Subscription row is not one)
    sock, bobs = await connect(alice), await connect(bob)
    await sock.send({"type": "subscribe", "topic": "secret", "ref": 1})
    assert await sock.expect("error") == {
        "type": "error",
        "code": "forbidden",
        "message": "topic 'secret' is private",
        "ref": 1,
    }
    for slug in ("bob", f"user-{bob.pk}", "everyone"):
        await sock.send({"type": "subscribe", "topic": slug, "cursor": 0, "ref": slug})
        assert await sock.expect("error") == {
            "type": "error",
            "code": "not_found",
            "message": f"no topic {slug!r}",
            "ref": slug,
        }
    assert await db(Subscription.objects.count)() == 0
    private = await db(notify)("secret", "for subscribers")
    to_bob = await db(notify)(bob, "bob's own")
    marker = await db(notify)(alice, "marker")
    assert [f["id"] for f in await bobs.notifications(2)] == [private.id, to_bob.id]
    # Fan-out is in id order: alice's next frame is her own event, nothing before it.
    assert (await sock.expect("notification"))["id"] == marker.id


@pytest.mark.asyncio
async def test_read_of_another_users_ids_is_silently_ignored(connect, amake_user):
    """(A mix of own and foreign ids:
    tests/test_consumer.py::test_read_and_read_all_update_every_connection.)"""
    alice, bob = await amake_user("alice"), await amake_user("bob")
    await db(notify)(alice, "alice's")
    theirs = [await db(notify)(bob, f"bob's {i}") for i in range(2)]
    sock, bobs = await connect(alice), await connect(bob)
    assert (sock.hello["unread"], bobs.hello["unread"]) == (1, 2)
    await sock.send({"type": "read", "ids": [e.id for e in theirs] + [10**9], "ref": "r"})
    assert await sock.expect("unread") == {"type": "unread", "count": 1, "ref": "r"}
    assert await db(unread_count)(bob) == 2
    assert await db(ReadMark.objects.count)() == 0
    marker = await db(notify)(bob, "marker")
    # No `unread` frame reached bob: his next frame is the next event.
    assert (await bobs.expect("notification"))["id"] == marker.id


# Flooding and connection caps ---------------------------------------------------------------------


@server_test
@pytest.mark.asyncio
async def test_flood_across_two_connections_gets_rate_limited_then_4429(
    server, open_ws, amake_user
):
    """Defaults: 50 frames per 10 s per user, then `rate_limited`, and the 10th frame after
    it closes with 4429. (Small limits in-process:
    tests/test_consumer.py::test_rate_limit_then_close_4429.)"""
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    (first, _), (second, _) = await open_ws(server, cookie), await open_ws(server, cookie)
    log = LogWatch(server)

    async def pings(ws: ClientConnection, count: int) -> None:
        for i in range(count):
            await ws.send(json.dumps({"type": "ping", "ref": i}))
        assert [await recv_frame(ws) for _ in range(count)] == [
            {"type": "pong", "ref": i} for i in range(count)
        ]

    await pings(first, 30)
    await pings(second, DEFAULT_RATE_LIMIT_FRAMES - 30)
    await second.send('{"type": "ping", "ref": "over"}')
    assert await recv_frame(second) == {
        "type": "error",
        "code": "rate_limited",
        "message": "too many frames; slow down or the socket will close",
    }
    for _ in range(DEFAULT_RATE_LIMIT_GRACE):
        await second.send('{"type": "ping"}')
    assert await close_code(second) == (4429, [])  # the over-limit pings got no answer
    [flood] = await log.until("ws.flood")
    assert re.fullmatch(
        rf"WARNING notifications\.realtime ws\.flood c\d+\.[0-9a-f]+ user={alice.pk}: closing",
        flood,
    )
    assert await transport_alive(first)  # only the socket that kept sending is closed
    # The budget is the user's: a frame from the other socket in this window closes it too.
    await first.send('{"type": "ping"}')
    assert await close_code(first) == (4429, [])


@server_test
@pytest.mark.asyncio
async def test_reconnecting_does_not_reset_the_users_flood_budget(server, open_ws, amake_user):
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    ws, _ = await open_ws(server, cookie)
    log = LogWatch(server)
    over_by = DEFAULT_RATE_LIMIT_GRACE + 1
    for i in range(DEFAULT_RATE_LIMIT_FRAMES + over_by):
        await ws.send(json.dumps({"type": "ping", "ref": i}))
    code, answers = await close_code(ws)
    assert code == 4429
    assert [a.get("ref", a["type"]) for a in answers] == [
        *range(DEFAULT_RATE_LIMIT_FRAMES),
        "error",
    ]
    await log.until(r"ws\.disconnect c\d+\.[0-9a-f]+ ")  # the server has let go of that socket
    again, _ = await open_ws(server, cookie)
    await again.send('{"type": "ping", "ref": "again"}')
    # Still the same 10 s window, still over the user's limit: no pong, but 4429.
    with pytest.raises(ConnectionClosed):
        await recv_frame(again)
    assert again.close_code == 4429


@server_test
@pytest.mark.asyncio
async def test_connection_cap_per_user_refused_at_the_handshake(server, open_ws, amake_user):
    alice, bob = await amake_user("alice"), await amake_user("bob")
    cookie = await db(session_cookie)(alice)
    sockets = [
        ws
        for ws, _ in await asyncio.gather(
            *(open_ws(server, cookie) for _ in range(DEFAULT_MAX_CONNECTIONS_PER_USER))
        )
    ]
    log = LogWatch(server)
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server.ws_url, origin=server.origin, additional_headers={"Cookie": cookie})
    assert refused.value.response.status_code == 403
    assert await log.until("ws.reject") == [
        f"WARNING notifications.realtime ws.reject reason='more than "
        f"{DEFAULT_MAX_CONNECTIONS_PER_USER} connections for this user' user={alice.pk} "
        "client=127.0.0.1"
    ]
    # The per-IP cap is off by default: 52 sockets from 127.0.0.1 are fine.
    _, anonymous = await open_ws(server)
    _, bobs = await open_ws(server, await db(session_cookie)(bob))
    assert (anonymous["user"], bobs["user"]) == (None, "bob")
    # A closed socket frees its place.
    await sockets[0].close()
    await log.until(r"ws\.disconnect c\d+\.[0-9a-f]+ code=1000")
    _, again = await open_ws(server, cookie)
    assert again["user"] == "alice"


@pytest.mark.asyncio
async def test_connection_cap_per_ip_when_configured(amake_user):
    """Off by default (NAT and proxies share addresses); the server cannot be configured from
    the tests, so this runs in-process."""
    opened: list[Socket] = []

    async def attempt(ip: str) -> bool:
        sock = Socket(client=(ip, 40000 + len(opened)))
        connected, _ = await sock.communicator.connect(timeout=5)
        if connected:
            opened.append(sock)
            await sock.expect("hello")
        return connected

    with override_settings(NOTIFICATIONS={"MAX_CONNECTIONS_PER_IP": 2}):
        assert [await attempt("203.0.113.7") for _ in range(3)] == [True, True, False]
        assert await attempt("203.0.113.8") is True
        await opened.pop(0).close()
        assert await attempt("203.0.113.7") is True
    for sock in opened:
        await sock.close()


# Session end --------------------------------------------------------------------------------------


@server_test
@pytest.mark.asyncio
async def test_logout_closes_that_sessions_sockets_1008(server, open_ws, amake_user):
    alice = await amake_user("alice")
    cookie, other_session = await db(session_cookie)(alice), await db(session_cookie)(alice)
    (first, _), (second, _) = await open_ws(server, cookie), await open_ws(server, cookie)
    elsewhere, _ = await open_ws(server, other_session)
    response = await asyncio.to_thread(logout, server.port, cookie)
    assert (response.status, response.getheader("Location")) == (302, "/")
    assert await close_code(first, 5) == (1008, [])
    assert await close_code(second, 5) == (1008, [])
    # The same user's other session (another browser) stays signed in.
    await elsewhere.send('{"type": "ping", "ref": 1}')
    assert await recv_frame(elsewhere) == {"type": "pong", "ref": 1}


@server_test
@pytest.mark.asyncio
@pytest.mark.parametrize("end", ["session-deleted", "user-deactivated"])
async def test_session_end_closes_the_socket_1008(server, open_ws, amake_user, end):
    """Done in this process, which the server only sees through the database: its periodic
    check (SESSION_CHECK_INTERVAL, 2 s) must close the socket."""
    alice = await amake_user("alice")
    ws, _ = await open_ws(server, await db(session_cookie)(alice))
    if end == "session-deleted":
        await db(Session.objects.all().delete)()
    else:
        alice.is_active = False
        await db(alice.save)()
    assert await close_code(ws, 5) == (1008, [])


# Membership ---------------------------------------------------------------------------------------


@server_test
@pytest.mark.asyncio
async def test_group_removal_in_another_process_stops_the_groups_events(
    server, open_ws, amake_user
):
    """In-process (admin in the server process, or Redis): covered by
    tests/test_consumer.py::test_group_membership_change_applies_to_open_sockets."""
    alice = await amake_user("alice")
    editors = await db(Group.objects.create)(name="editors")
    await db(alice.groups.add)(editors)
    ws, _ = await open_ws(server, await db(session_cookie)(alice))
    before = await db(notify)(editors, "before the removal")
    assert [f["type"] for f in await until_notification(ws, before.id)] == ["notification"]
    await db(editors.user_set.remove)(alice)
    await db(notify)(editors, "after the removal")
    marker = await db(notify)(alice, "marker")
    frames = await until_notification(ws, marker.id)
    # At once: the `unread` (the group's event is no longer hers) comes before the next
    # group event would; that event never comes. The count is 0, or 1 when the marker was
    # already committed as it was taken.
    assert [f["type"] for f in frames] == ["unread", "notification"], frames
    assert frames[0]["count"] in (0, 1)


# Slow and silent clients --------------------------------------------------------------------------


async def _stalled_clients(port: int, count: int) -> list[tuple[Any, asyncio.StreamWriter]]:
    """Half an upgrade request each, and as many connections that send nothing."""
    clients = []
    for _ in range(count):
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(upgrade_request(port)[:60])
        await half[1].drain()
        clients.append(half)
        clients.append(await asyncio.open_connection("127.0.0.1", port))
    return clients


@server_test
@pytest.mark.asyncio
async def test_stalled_handshakes_do_not_hold_up_other_clients(server, open_ws):
    clients = await _stalled_clients(server.port, 20)
    try:
        ws, hello = await open_ws(server)
        assert hello["type"] == "hello"
        await ws.send('{"type": "ping"}')
        assert await recv_frame(ws) == {"type": "pong"}
    finally:
        for _, writer in clients:
            writer.close()


@server_test
@pytest.mark.asyncio
@pytest.mark.xfail(
    strict=True,
    reason="an incomplete HTTP request never reaches daphne's WebSocket handshake timeout "
    "(5 s): Twisted's HTTP idle timeout (60 s, reset by every byte) drops it after 60 s",
)
async def test_incomplete_handshake_dropped_within_15s(server):
    """Measured with daphne 4.2.3 / Twisted 26.10: both connections are dropped after 60 s."""
    clients = await _stalled_clients(server.port, 1)
    try:
        elapsed = await asyncio.gather(*(dropped_within(reader, 15) for reader, _ in clients))
        assert None not in elapsed, elapsed
    finally:
        for _, writer in clients:
            writer.close()


@server_test
@pytest.mark.asyncio
@pytest.mark.parametrize("ws", ["websockets-sansio", "websockets"])
async def test_incomplete_handshake_dropped_on_the_production_server(ws, amake_user):
    """uvicorn with notifications.realtime.uvicorn_http (the Dockerfile's server) drops a
    half-sent upgrade, a silent connection and a client trickling a byte a second once
    REQUEST_HEAD_TIMEOUT passes, while a complete handshake on the same server goes on."""
    with ServerProcess(server=f"uvicorn-{ws}", NOTIFICATIONS_REQUEST_HEAD_TIMEOUT="2") as uv:
        clients = await _stalled_clients(uv.port, 2)
        trickler = await asyncio.open_connection("127.0.0.1", uv.port)
        request = upgrade_request(uv.port)

        async def trickle() -> None:
            for byte in request[:-4]:  # never the final blank line
                trickler[1].write(bytes([byte]))
                await trickler[1].drain()
                await asyncio.sleep(0.5)

        trickling = asyncio.create_task(trickle())
        try:
            async with ws_connect(uv.ws_url, origin=uv.origin) as ws_ok:
                assert json.loads(await asyncio.wait_for(ws_ok.recv(), 5))["type"] == "hello"
                readers = [reader for reader, _ in clients] + [trickler[0]]
                elapsed = await asyncio.gather(*(dropped_within(r, 10) for r in readers))
                assert None not in elapsed, elapsed
                assert all(1.5 < seconds < 6 for seconds in elapsed), elapsed
                # The upgraded socket is past its head: the deadline does not touch it.
                await ws_ok.send('{"type": "ping"}')
                assert json.loads(await asyncio.wait_for(ws_ok.recv(), 5)) == {"type": "pong"}
        finally:
            trickling.cancel()
            for _, writer in [*clients, trickler]:
                writer.close()


@server_test
@pytest.mark.asyncio
async def test_keep_alive_connection_gets_the_head_deadline_again():
    """After a response, an idle keep-alive connection that starts a next request and stalls
    is dropped by the same deadline."""
    with ServerProcess(
        server="uvicorn-websockets-sansio", NOTIFICATIONS_REQUEST_HEAD_TIMEOUT="2"
    ) as uv:
        reader, writer = await asyncio.open_connection("127.0.0.1", uv.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await asyncio.wait_for(reader.readexactly(length), 5)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            await writer.drain()
            elapsed = await dropped_within(reader, 10)
            assert elapsed is not None and elapsed < 6, elapsed
        finally:
            writer.close()


@server_test
@pytest.mark.asyncio
async def test_policy_closes_work_on_daphne_without_fast_writes(amake_user):
    """daphne refuses 1008/1009 through its ASGI close (django/daphne#374); the consumer sends
    those frames itself also when FAST_WRITES is off."""
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    with ServerProcess(NOTIFICATIONS_FAST_WRITES="false") as plain:
        async with ws_connect(plain.ws_url, origin=plain.origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["code"] == "too_large"
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1009
        async with ws_connect(
            plain.ws_url, origin=plain.origin, additional_headers={"Cookie": cookie}
        ) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["user"] == "alice"
            await db(Session.objects.all().delete)()
            await asyncio.wait_for(ws.wait_closed(), 8)
            assert ws.close_code == 1008
    assert "writer=AsgiWriter" in plain.output()
