"""Structured logs (JSON_LOGS): one JSON line per socket event and publish failure, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from channels.db import database_sync_to_async as db
from django.test import override_settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from notifications import notify
from notifications.realtime import publish

from .faultkit import free_port
from .server import ServerProcess
from .support import Socket, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

JSON_ON = {"JSON_LOGS": True}


def lines(caplog) -> list[dict]:
    return [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "notifications.events"
    ]


@override_settings(NOTIFICATIONS=JSON_ON)
async def test_connect_replay_close_and_reject_lines(caplog, amake_user, connect):
    caplog.set_level(logging.INFO, logger="notifications.events")
    alice = await amake_user("alice")
    event = await db(notify)(alice, "before")
    sock = await connect(alice, cursor=0)
    await sock.expect("notification")
    await sock.expect("replayed")
    await sock.close()
    foreign = Socket(origin="https://evil.example")
    connected, _ = await foreign.communicator.connect(timeout=5)
    assert not connected
    got = lines(caplog)
    kinds = [line["event"] for line in got]
    assert kinds == ["connect", "replay", "close", "reject"], got
    connected_line, replay, close, reject = got
    assert {k: connected_line[k] for k in ("user", "client", "cursor")} == {
        "user": alice.pk,
        "client": "127.0.0.1",
        "cursor": 0,
    }
    assert replay["count"] == 1 and replay["complete"] is True and replay["after"] == 0
    assert replay["conn"] == connected_line["conn"] == close["conn"]
    assert close["by"] == "client" and close["user"] == alice.pk
    assert reject == {
        "ts": reject["ts"],
        "event": "reject",
        "reason": "origin",
        "origin": "https://evil.example",
        "client": "127.0.0.1",
    }
    assert all(line["ts"].endswith("+00:00") for line in got)
    assert event.title not in json.dumps(got)  # no notification content


@override_settings(NOTIFICATIONS=JSON_ON)
async def test_server_close_code_is_logged(caplog, amake_user, connect):
    caplog.set_level(logging.INFO, logger="notifications.events")
    alice = await amake_user("alice")
    sock = await connect(alice)
    await sock.send("x" * (70 * 1024))  # over MAX_FRAME_BYTES: too_large, then 1009
    await sock.expect("error")
    assert await sock.closed() == 1009
    await sock.close()
    closes = [line for line in lines(caplog) if line["event"] == "close"]
    assert [(c["code"], c["by"]) for c in closes] == [(1009, "server")]


async def test_off_by_default(caplog, connect):
    caplog.set_level(logging.INFO, logger="notifications.events")
    sock = await connect()
    await sock.close()
    assert lines(caplog) == []


@override_settings(
    NOTIFICATIONS=JSON_ON,
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # Nothing listens there: the publish fails (the row is stored all the same).
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    },
)
def test_publish_failure_line(caplog):
    from channels.layers import channel_layers

    caplog.set_level(logging.INFO, logger="notifications.events")
    channel_layers.backends.clear()
    try:
        event = notify("everyone", "layer down")
        assert publish.flush(5)
    finally:
        channel_layers.backends.clear()
    failures = [line for line in lines(caplog) if line["event"] == "publish_failure"]
    assert len(failures) == 1, lines(caplog)
    assert failures[0]["message"] == "notifications.event"
    assert failures[0]["error"].startswith(("ConnectionError", "OSError", "ConnectionRefused"))
    assert event.id


@pytest.mark.server
async def test_real_server_writes_json_lines_without_secrets(amake_user):
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    session_key = cookie.split("=", 1)[1]
    with ServerProcess(NOTIFICATIONS_JSON_LOGS="true") as server:
        async with ws_connect(
            f"{server.ws_url}?cursor=0", origin=server.origin, additional_headers={"Cookie": cookie}
        ) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "replayed"
        with pytest.raises(InvalidStatus):
            await ws_connect(server.ws_url, origin="null", open_timeout=5)

        def structured() -> list[dict]:
            return [
                json.loads(line)
                for line in server.output().splitlines()
                if line.startswith('{"ts":')
            ]

        from .faultkit import async_wait_until

        await async_wait_until(
            lambda: any(line["event"] == "close" for line in structured()),
            timeout=5,
            what="a close line",
        )
        got = structured()
        assert [line["event"] for line in got] == ["connect", "replay", "close", "reject"], got
        assert got[0]["user"] == alice.pk and got[2]["code"] == 1000 and got[2]["by"] == "client"
        assert got[3]["reason"] == "origin" and got[3]["origin"] == "null"
        assert session_key not in server.output()
