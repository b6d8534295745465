"""daphne drops empty WebSocket messages an application sends (daphne_compat.py); the
wrapper sends them, keeps daphne's fast writer, and changes nothing on uvicorn. Real servers,
real sockets: the bug is in the server."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from .server import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)


async def _exchange(url: str, messages: list[str | bytes]) -> tuple[str, list]:
    """The writer the route found, then what came back for each message (None: nothing
    within a second)."""
    async with websockets.connect(url, open_timeout=10) as ws:
        writer = await asyncio.wait_for(ws.recv(), 5)
        answers = []
        for message in messages:
            await ws.send(message)
            try:
                answers.append(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                answers.append(None)
        return writer, answers


@pytest.mark.parametrize("server", ["daphne", "uvicorn-websockets-sansio"])
def test_empty_messages_are_sent_and_the_fast_writer_is_kept(server):
    messages: list[str | bytes] = ["", b"", "not empty", b"\x00\x01", ""]
    with ServerProcess(server=server, app="tests.asgi_echo:application") as proc:
        writer, answers = asyncio.run(_exchange(f"ws://127.0.0.1:{proc.port}/fixed/", messages))
        raw_writer, raw = asyncio.run(_exchange(f"ws://127.0.0.1:{proc.port}/raw/", ["", b"", "x"]))
    assert answers == messages  # each one back, empty ones included
    if server == "daphne":
        assert writer == raw_writer == "DaphneWriter"
        # Without the wrapper daphne sends nothing for an empty message (daphne 4.2). When
        # this fails, daphne has fixed it and SendEmptyMessages can go.
        assert raw == [None, None, "x"]
    else:
        assert writer == raw_writer == "UvicornWriter"
        assert raw == ["", b"", "x"]
