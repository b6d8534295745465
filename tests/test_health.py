"""/healthz with the channel layer, /readyz, and the SIGTERM drain (close 1012, then exit) on
the real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .faultkit import RedisServer, wait_until
from .server import ServerProcess
from .support import require_service

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

SERVERS = ["daphne", "uvicorn-websockets-sansio", "runserver", "dockerfile"]
# The Dockerfile's CMD options that matter for signals and sockets (uvloop, proxy headers).
DOCKERFILE_ARGS = ("--loop", "uvloop", "--backlog", "4096", "--proxy-headers")


def get(server: ServerProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.origin}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_answers_ok():
    with ServerProcess() as server:
        assert get(server, "/readyz") == (200, {"status": "ok"})
        assert get(server, "/healthz") == (200, {"status": "ok"})


@pytest.mark.redis
def test_healthz_round_trips_the_channel_layer():
    require_service(
        "redis", RedisServer.available(), "redis-server is not installed (apt-get install redis)"
    )
    redis = RedisServer().start()
    try:
        with ServerProcess(REDIS_URL=redis.url, NOTIFICATIONS_HEALTH_TIMEOUT="0.5") as server:
            assert get(server, "/healthz") == (200, {"status": "ok"})
            assert get(server, "/healthz") == (200, {"status": "ok"})  # the probe is reused
            redis.stop()
            down = {"status": "error", "channel_layer": "unavailable"}
            status, body = get(server, "/healthz")
            assert status == 503 and {k: body[k] for k in down} == down, body
            assert body["reason"] in ("timeout", "error")
            assert get(server, "/readyz")[0] == 503
            RedisServer(port=redis.port).start()  # the same address comes back
            wait_until(
                lambda: get(server, "/healthz") == (200, {"status": "ok"}),
                timeout=15,
                what="healthz back to 200 after Redis returned",
            )
            assert "healthz: channel layer unavailable" in server.output()
            # The details stay in the log; the answer names no host or port.
            assert str(redis.port) not in json.dumps(body)
    finally:
        redis.stop()
        subprocess.run(
            ["redis-cli", "-p", str(redis.port), "shutdown", "nosave"],
            capture_output=True,
            check=False,
        )


async def _closed_code(ws) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"no close frame: {exc}"
        return exc.rcvd.code


@pytest.mark.parametrize("kind", SERVERS)
async def test_sigterm_closes_sockets_with_1012_and_exits(kind):
    extra = DOCKERFILE_ARGS if kind == "dockerfile" else ()
    kind = "uvicorn-websockets-sansio" if kind == "dockerfile" else kind
    with ServerProcess(server=kind, extra_args=extra, NOTIFICATIONS_DRAIN_GRACE="2") as server:
        clients = [await ws_connect(server.ws_url, origin=server.origin) for _ in range(2)]
        try:
            for ws in clients:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            assert (await asyncio.to_thread(get, server, "/readyz"))[0] == 200
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            # During DRAIN_GRACE: out of the load balancer, no new sockets, old ones open.
            await asyncio.to_thread(
                wait_until,
                lambda: get(server, "/readyz") == (503, {"status": "draining"}),
                timeout=5,
                what="/readyz answers 503 draining",
            )
            with pytest.raises(InvalidStatus) as refused:
                await ws_connect(server.ws_url, origin=server.origin, open_timeout=5)
            assert refused.value.response.status_code == 403
            assert server.process.poll() is None
            # Then every socket gets 1012 and the process exits.
            codes = await asyncio.gather(*(_closed_code(ws) for ws in clients))
            assert codes == [1012, 1012]
            await asyncio.to_thread(server.process.wait, 20)
        finally:
            for ws in clients:
                await ws.close()
        output = server.output()
        assert "drain: SIGTERM, closing 2 sockets with 1012" in output, output
        assert "ws.reject reason='draining'" in output


@pytest.mark.parametrize("kind", ["daphne", "uvicorn-websockets-sansio"])
async def test_a_second_sigterm_stops_at_once(kind):
    with ServerProcess(server=kind, NOTIFICATIONS_DRAIN_GRACE="60") as server:
        async with ws_connect(server.ws_url, origin=server.origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(
                wait_until,
                lambda: get(server, "/readyz")[0] == 503,
                timeout=5,
                what="draining",
            )
            # Still in the 60 s grace: a second SIGTERM skips the rest of the drain.
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 15)
