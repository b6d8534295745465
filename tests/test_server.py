"""The real server (daphne) over real TCP: RFC 6455 handshake, origin, cross-process delivery."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest
from channels.db import database_sync_to_async as db
from websockets.asyncio.client import connect as ws_connect

from notifications import notify

from .server import ServerProcess, manage
from .support import port_open, require_service, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server]

SEED_KEY = "x3JJHMbDL1EzLkh9GBhXDw=="
SEED_ACCEPT = "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def server():
    with ServerProcess() as running:
        yield running


def handshake(port: int, *, origin: str | None, protocol: str | None = None) -> str:
    """Send the seed's upgrade request (RFC 6455 section 1.3) and return the response head."""
    lines = [
        "GET /ws/notifications/ HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {SEED_KEY}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines.append("Sec-WebSocket-Version: 13")
    if origin:
        lines.append(f"Origin: {origin}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n\r\n")[0].decode("latin1")


def headers_of(head: str) -> dict[str, str]:
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    }


def test_seed_handshake_gets_101_and_the_rfc_accept_key(server):
    head = handshake(server.port, origin=server.origin, protocol="chat")
    assert head.startswith("HTTP/1.1 101"), head
    headers = headers_of(head)
    assert headers["sec-websocket-accept"] == SEED_ACCEPT
    assert headers["upgrade"].lower() == "websocket"
    # Only "chat" was offered: accepted with no subprotocol selected (RFC 6455 4.2.2).
    assert "sec-websocket-protocol" not in headers


def test_handshake_selects_our_subprotocol(server):
    head = handshake(server.port, origin=server.origin, protocol="chat, notifications.v1")
    assert head.startswith("HTTP/1.1 101"), head
    assert headers_of(head)["sec-websocket-protocol"] == "notifications.v1"


@pytest.mark.parametrize("origin", ["http://old.inapp.com", "null", "https://evil.example:8000"])
def test_foreign_origin_gets_403(server, origin):
    head = handshake(server.port, origin=origin)
    assert head.startswith("HTTP/1.1 403"), head
    assert "ws.reject" in server.output()


@pytest.mark.asyncio
async def test_session_cookie_authenticates_the_socket(server, amake_user):
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    async with ws_connect(
        server.ws_url,
        origin=server.origin,
        additional_headers={"Cookie": cookie},
        subprotocols=["notifications.v1"],
    ) as ws:
        assert ws.subprotocol == "notifications.v1"
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["user"] == "alice" and hello["unread"] == 0
        event = await db(notify)(alice, "over TCP")
        # The test process has its own in-memory layer: the server's poll brings the event.
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (frame["type"], frame["id"]) == ("notification", event.id)


async def _cli_reaches_client(server: ServerProcess, **env: str) -> None:
    async with ws_connect(server.ws_url, origin=server.origin) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"
        result = await asyncio.to_thread(
            manage, "notify", "--title", "From cron", "--everyone", **env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("id=") and result.stdout.strip().endswith("recipients=0")
        event_id = int(result.stdout.split()[0][3:])
        # PROTOCOL.md: the CLI reaches clients of the running server within 2 s.
        frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert (frame["id"], frame["title"], frame["replay"]) == (event_id, "From cron", False)


@pytest.mark.asyncio
async def test_cli_in_another_process_reaches_clients_with_default_settings(server):
    await _cli_reaches_client(server)


@pytest.mark.redis
@pytest.mark.asyncio
async def test_cli_reaches_clients_through_redis():
    require_service(
        "redis",
        port_open("127.0.0.1", 6379) or "REDIS_URL" in os.environ,
        "Redis is not running: start redis-server on 127.0.0.1:6379 or set REDIS_URL",
    )
    # A long poll interval proves the event came through Redis, not the database poll.
    with ServerProcess(REDIS_URL=REDIS_URL, NOTIFICATIONS_POLL_INTERVAL="60") as server:
        await _cli_reaches_client(server, REDIS_URL=REDIS_URL)


def test_cli_errors_exit_1_and_store_nothing(make_user):
    make_user("alice")
    result = manage("notify", "--title", "x", "--user", "alice", "nobody")
    assert result.returncode == 1
    assert "unknown user(s): nobody" in result.stderr
    assert result.stdout == ""
    from notifications.models import Event

    assert Event.objects.count() == 0


@pytest.mark.redis
def test_sync_publishing_reuses_one_loop_and_connection_pool():
    """notify() from sync code (a script, a worker) publishes on one long-lived loop, not a
    new loop (and a new Redis connection pool) per call."""
    from django.test import override_settings

    from notifications.realtime import publish

    require_service(
        "redis",
        port_open("127.0.0.1", 6379) or "REDIS_URL" in os.environ,
        "Redis is not running: start redis-server on 127.0.0.1:6379 or set REDIS_URL",
    )
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        publish.publish_raw({"type": "notifications.ping"})
        loop = publish._publisher.get()
        publish.publish_raw({"type": "notifications.ping"})
        assert publish._publisher.get() is loop and loop.is_running()
