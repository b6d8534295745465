"""ASGI application for WebSocket conformance runs only: the project's stack plus echo routes.

Autobahn|Testsuite's fuzzing client sends arbitrary text and binary messages and expects each
one echoed back unchanged. ``/ws/notifications/`` speaks a JSON protocol and answers such
messages with ``error`` frames, so against it most cases fail for protocol reasons that say
nothing about the transport. This module keeps what carries the bytes as in production (the
``project.asgi`` HTTP application and settings, the same wrapping of the WebSocket routes as
``notifications/realtime/routing.py``: ``SendEmptyMessages`` and ``OriginGuard`` around a
``URLRouter``, and the same server with the same options) and adds two echo routes next to
``/ws/notifications/``:

``/ws/echo/``
    A plain ASGI consumer, like ``NotificationConsumer``: every message goes back as it came
    (text as text, bytes as bytes) through the ASGI ``websocket.send``.
``/ws/echo/fast/``
    The same, but a text message goes back the way the hub delivers notifications in
    production: a pre-built frame (``transport.Frame``) written by the project's fast writer
    straight to daphne's or uvicorn's transport (``transport.writer_for``). Bytes still go
    through ``websocket.send``. This puts the project's own framing under Autobahn's checks.

Never deploy it: it is served only by ``bench/autobahn/run.sh``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Sets Django up (django.setup()) and builds the production HTTP application.
from project.asgi import django_http

# isort: split
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from notifications.realtime.daphne_compat import SendEmptyMessages
from notifications.realtime.origin import OriginGuard
from notifications.realtime.routing import websocket_urlpatterns
from notifications.realtime.transport import Frame, writer_for


async def _send(send: Any, message: dict[str, Any]) -> bool:
    """ASGI send; False when the server says the socket is already gone.

    The ASGI spec lets a server raise on a send to a closed socket (uvicorn raises
    ``ClientDisconnected``, an ``OSError``); daphne 4.2.3 raises autobahn's ``Disconnected``
    (a ``RuntimeError``) in the moment between autobahn failing the connection and daphne
    noticing. An echo that let it escape would log a traceback per such case; this one notes
    it on one line (run.sh counts them) and ends, as a careful application does.
    """
    try:
        await send(message)
    except (OSError, RuntimeError) as exc:
        print(f"autobahn echo: send after close: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    return True


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Send every message back unchanged through the ASGI send."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("text") is not None:
                reply = {"type": "websocket.send", "text": message["text"]}
            else:
                reply = {"type": "websocket.send", "bytes": message.get("bytes") or b""}
            if not await _send(send, reply):
                return
        elif kind == "websocket.disconnect":
            return


_reported: set[str] = set()


async def fast_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Like :func:`echo`, but text goes back through the production fast writer."""
    writer = None
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
            writer = writer_for(send)
            name = type(writer).__name__
            if name not in _reported:  # run.sh shows this line: which writer was tested
                _reported.add(name)
                print(f"autobahn fast echo: writer={name} fast={writer.fast}", file=sys.stderr)
        elif kind == "websocket.receive":
            if message.get("text") is not None:
                assert writer is not None
                await writer.write(Frame(message["text"]))
            else:
                reply = {"type": "websocket.send", "bytes": message.get("bytes") or b""}
                if not await _send(send, reply):
                    return
        elif kind == "websocket.disconnect":
            return


websocket_application = SendEmptyMessages(
    OriginGuard(
        URLRouter(
            [
                path("ws/echo/", echo),
                path("ws/echo/fast/", fast_echo),
                *websocket_urlpatterns,
            ]
        )
    )
)

application = ProtocolTypeRouter({"http": django_http, "websocket": websocket_application})
