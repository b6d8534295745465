"""An echo WebSocket application for tests/test_daphne_compat.py, served by a real server.

``/fixed/``: wrapped in ``SendEmptyMessages``; ``/raw/``: not. On connect each route first
sends the name of the writer ``transport.writer_for`` finds for its ``send`` (so the test can
check that the wrapper keeps daphne's fast writer), then echoes every message unchanged.
"""

from __future__ import annotations

from typing import Any

from notifications.realtime.daphne_compat import SendEmptyMessages
from notifications.realtime.transport import writer_for


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": type(writer_for(send)).__name__})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return


_fixed = SendEmptyMessages(echo)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})  # lifespan.startup / .shutdown
            if kind == "lifespan.shutdown":
                return
    app = _fixed if scope.get("path") == "/fixed/" else echo
    await app(scope, receive, send)
