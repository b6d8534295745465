"""Scheduled broadcasts go out from the running server itself, on time and exactly once."""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.db import connection
from django.utils import timezone
from websockets.asyncio.client import connect as ws_connect

from notifications import broadcasting
from notifications.models import Broadcast, Event

from .faultkit import RedisServer
from .server import ServerProcess
from .support import require_service

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server]


async def _hello(ws) -> dict:
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "hello"
    return frame


def _schedule(author, title: str, at) -> Broadcast:
    broadcast = Broadcast.objects.create(title=title, created_by=author)
    return broadcasting.schedule(broadcast, by=author, at=at)


async def test_scheduled_broadcast_goes_out_within_2_s_from_the_real_server(amake_user):
    author = await amake_user("author", is_staff=True, is_superuser=True)
    with ServerProcess() as server:
        async with ws_connect(server.ws_url, origin=server.origin) as ws:
            await _hello(ws)  # the server's hub (and its sender) runs from here on
            send_at = timezone.now() + timedelta(seconds=1.5)
            await db(_schedule)(author, "On time", send_at)
            frame = json.loads(await asyncio.wait_for(ws.recv(), 6))
            arrived = timezone.now()
    assert frame["type"] == "notification" and frame["title"] == "On time"
    assert send_at <= arrived < send_at + timedelta(seconds=2), arrived - send_at
    broadcast = await db(Broadcast.objects.get)()
    assert broadcast.status == Broadcast.Status.SENT and broadcast.sent_at >= send_at
    # The server's hub counted its live delivery to the anonymous connection.
    deadline = time.monotonic() + 5
    while broadcast.delivery_reports == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await db(broadcast.refresh_from_db)()
    assert (broadcast.delivered_anonymous, broadcast.delivered_connections) == (1, 1)


async def test_a_request_starts_the_sender_without_any_socket(amake_user):
    """`make run` with only the admin open: an HTTP request starts the hub and its sender."""
    author = await amake_user("author", is_staff=True, is_superuser=True)
    with ServerProcess() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        await db(_schedule)(author, "Nobody connected", timezone.now())
        deadline = time.monotonic() + 5
        while not await db(Event.objects.exists)():
            assert time.monotonic() < deadline, server.output()[-3000:]
            await asyncio.sleep(0.05)
    broadcast = await db(Broadcast.objects.get)()
    assert broadcast.status == Broadcast.Status.SENT


async def test_uvicorn_starts_the_sender_at_server_start(amake_user):
    """The ASGI lifespan startup starts the hub: no request or socket is needed."""
    author = await amake_user("author", is_staff=True, is_superuser=True)
    with ServerProcess(server="uvicorn") as server:
        await db(_schedule)(author, "Nobody asked", timezone.now())
        deadline = time.monotonic() + 5
        while not await db(Event.objects.exists)():
            assert time.monotonic() < deadline, server.output()[-3000:]
            await asyncio.sleep(0.05)


async def _exactly_once_with_two_servers(author, count: int = 6, **env: str) -> None:
    with ServerProcess(**env) as first, ServerProcess(**env) as second:
        async with (
            ws_connect(first.ws_url, origin=first.origin) as a,
            ws_connect(second.ws_url, origin=second.origin) as b,
        ):
            await _hello(a)
            await _hello(b)
            send_at = timezone.now() + timedelta(seconds=1)
            for i in range(count):
                await db(_schedule)(author, f"Once {i}", send_at)
            received = {}
            for name, ws in (("a", a), ("b", b)):
                frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]
                received[name] = sorted(frame["title"] for frame in frames)
                # Nothing more: no broadcast went out twice.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 1.5)
        logs = first.output() + second.output()
    expected = sorted(f"Once {i}" for i in range(count))
    assert received == {"a": expected, "b": expected}
    assert await db(Event.objects.count)() == count
    statuses = await db(lambda: set(Broadcast.objects.values_list("status", flat=True)))()
    assert statuses == {"sent"}
    assert logs.count(": sent to 1 recipients") == count, logs[-3000:]
    # Delivered live: each process counted its own socket, and the counts were added up.
    deadline = time.monotonic() + 5
    while True:
        counts = await db(
            lambda: set(
                Broadcast.objects.values_list(
                    "delivery_reports", "delivered_anonymous", "delivered_connections"
                )
            )
        )()
        if counts == {(2, 2, 2)} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert counts == {(2, 2, 2)}


async def test_exactly_once_with_two_server_processes_on_sqlite(amake_user):
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite run of this test; the PostgreSQL one is marked postgres")
    await _exactly_once_with_two_servers(await amake_user("author", is_superuser=True))


@pytest.mark.postgres
async def test_exactly_once_with_two_server_processes_on_postgres(amake_user):
    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "runs on PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )
    await _exactly_once_with_two_servers(await amake_user("author", is_superuser=True))


@pytest.mark.postgres
@pytest.mark.redis
async def test_exactly_once_with_two_server_processes_on_postgres_and_redis(amake_user):
    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "runs on PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )
    require_service(
        "redis",
        RedisServer.available(),
        "needs redis-server on PATH to run a private Redis on a free port "
        "(apt-get install redis-server)",
    )
    author = await amake_user("author", is_superuser=True)
    with RedisServer() as redis:
        # Both processes share the layer: each gets every event once from Redis, and counts it.
        await _exactly_once_with_two_servers(author, REDIS_URL=redis.url)


def test_send_due_command_sends_what_is_due_once(make_user):
    from django.core.management import call_command

    author = make_user("author", is_superuser=True)
    due = _schedule(author, "Due", timezone.now())
    _schedule(author, "Later", timezone.now() + timedelta(hours=1))
    out = io.StringIO()
    call_command("notifications_send_due", stdout=out)
    assert out.getvalue() == f"broadcast={due.pk} sent to 1 recipients\n"
    out = io.StringIO()
    call_command("notifications_send_due", stdout=out)  # nothing twice
    assert out.getvalue() == ""
    assert Event.objects.get().title == "Due"
