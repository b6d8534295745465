"""The SSE fallback view on the real server: the same frames as the WebSocket, origin check."""

from __future__ import annotations

import http.client
import json
import re

import pytest

from notifications import notify

from .server import ServerProcess
from .support import session_cookie

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

SOCKET_ID = re.compile(r"c[0-9]+\.[0-9a-f]{6}\Z")


@pytest.fixture
def server(transactional_db):
    with ServerProcess() as server:
        yield server


def open_stream(server, path="/sse/notifications/", **headers):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", path, headers=headers)
    return connection, connection.getresponse()


def frames(response, count):
    """The next ``count`` data frames (comment and retry lines skipped)."""
    out = []
    while len(out) < count:
        line = response.fp.readline().decode()
        assert line, "the stream ended"
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
    return out


def test_signed_in_stream_replays_from_the_cursor_then_goes_live(server, make_user):
    alice = make_user("alice")
    missed = notify(alice, "missed")
    cookie = session_cookie(alice)
    connection, response = open_stream(
        server, f"/sse/notifications/?cursor={missed.id - 1}&ext=inbox", Cookie=cookie
    )
    try:
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        assert response.getheader("X-Accel-Buffering") == "no"
        hello, replayed_event, replayed = frames(response, 3)
        assert SOCKET_ID.match(hello.pop("socket"))  # the stream is a socket to the hub
        assert hello == {
            "type": "hello",
            "protocol": 1,
            "user": "alice",
            "unread": 1,
            "cursor": missed.id,
        }
        assert replayed_event["id"] == missed.id and replayed_event["replay"] is True
        assert replayed == {"type": "replayed", "count": 1, "complete": True}
        live = notify(alice, "live")  # reaches the server by its database poll
        (frame,) = frames(response, 1)
        assert (frame["type"], frame["id"], frame["replay"]) == ("notification", live.id, False)
    finally:
        connection.close()


def test_foreign_origin_is_refused(server):
    connection, response = open_stream(server, Origin="https://evil.example")
    try:
        assert response.status == 403
    finally:
        connection.close()


def test_anonymous_stream_says_hello(server):
    connection, response = open_stream(server, Origin=server.origin)
    try:
        assert response.status == 200
        (hello,) = frames(response, 1)
        assert SOCKET_ID.match(hello.pop("socket"))
        assert hello == {"type": "hello", "protocol": 1, "user": None, "unread": None, "cursor": 0}
    finally:
        connection.close()


def test_a_stream_counts_as_a_connection_in_the_metrics(server):
    def connections() -> float:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        (line,) = [row for row in text.splitlines() if row.startswith("notifications_connections ")]
        return float(line.split()[1])

    connection, response = open_stream(server)
    try:
        assert frames(response, 1)[0]["type"] == "hello"
        assert connections() == 1.0
    finally:
        connection.close()
