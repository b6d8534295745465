"""Closed sockets on the real servers leave no reference cycles behind.

GcPolicy (notifications/realtime/gcpolicy.py) freezes the objects of open sockets; a closed
socket's objects are then freed by reference counting alone, and any cycle among them waits
for the planned full collection (ten minutes by default). The in-process test of that
(tests/test_gcpolicy.py) sees only the project's objects; the servers' own protocol objects
are checked here, in the server process: tests/serverprobe/sitecustomize.py turns the
collector off there (every cycle stays, as frozen ones would) and collects when asked.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

from .server import ServerProcess

PROBE = Path(__file__).resolve().parent / "serverprobe"
# The servers' objects (daphne, Twisted, autobahn, uvicorn, websockets, asyncio).
SERVER_MODULES = ("daphne", "twisted", "autobahn", "uvicorn", "websockets", "asyncio")


async def _collect(folder: Path) -> dict:
    """One full collection in the server: its cyclic garbage, and its live connections."""
    (folder / "collect").touch()
    result = folder / "garbage.json"
    deadline = asyncio.get_running_loop().time() + 10
    while not result.exists():
        assert asyncio.get_running_loop().time() < deadline, "the server probe did not answer"
        await asyncio.sleep(0.02)
    answer = json.loads(result.read_text())
    result.unlink()
    return answer


async def _until_no_socket_is_alive(folder: Path) -> collections.Counter:
    """Collect until the server holds no connection objects; the garbage found meanwhile."""
    garbage: collections.Counter = collections.Counter()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        answer = await _collect(folder)
        garbage.update(answer["garbage"])
        if answer["alive"] == 0:
            return garbage
        assert asyncio.get_running_loop().time() < deadline, f"{answer['alive']} still alive"
        await asyncio.sleep(0.1)


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
# Not uvicorn's legacy ``--ws websockets`` protocol: it does leave a cycle per socket (its
# WebSocketProtocol with websockets' Server, a StreamReader, Headers and Events), which
# GcPolicy holds until its full collection.
@pytest.mark.parametrize("kind", ["daphne", "uvicorn-websockets-sansio"])
async def test_closed_sockets_leave_no_server_cycles(kind, tmp_path):
    env = {
        "PYTHONPATH": str(PROBE),
        "SERVER_PROBE_DIR": str(tmp_path),
        "NOTIFICATIONS_GC_FREEZE_INTERVAL": "null",  # the probe turns the collector off
    }
    with ServerProcess(server=kind, **env) as server:
        async with ws_connect(server.ws_url, origin=server.origin) as first:
            assert json.loads(await asyncio.wait_for(first.recv(), 5))["type"] == "hello"
        await _until_no_socket_is_alive(tmp_path)  # startup's garbage, the first socket
        sockets = []
        for _ in range(10):
            ws = await ws_connect(server.ws_url, origin=server.origin)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            sockets.append(ws)
        # What the handshakes left (uvicorn's HTTP protocol, which hands the socket over to
        # the WebSocket one) is young garbage that GcPolicy collects before it freezes.
        await _collect(tmp_path)
        for ws in sockets:
            await ws.close()
        garbage = await _until_no_socket_is_alive(tmp_path)
    assert {name: n for name, n in garbage.items() if name.startswith(SERVER_MODULES)} == {}
