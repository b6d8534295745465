"""The Server-Sent Events fallback: the WebSocket protocol's server frames over an event stream.

Where a proxy refuses WebSocket upgrades, the browser client reads
``GET /sse/notifications/?cursor=N&ext=inbox`` instead. Each ``data:`` line is one frame of
PROTOCOL.md, in the same order and under the same rules (``hello`` first, the replay for the
cursor, ``replayed``, then live frames), because the stream *is* a
:class:`~notifications.realtime.consumer.NotificationConsumer`: :class:`StreamBridge` plays the
ASGI WebSocket events to it, so the handshake, the hub's fan-out, cursor resume, session checks
and closing are the code the WebSocket runs. The stream carries nothing upstream: the client
reads and writes its inbox over the JSON API (``/api/v1/inbox``).

It is an async view, so one open stream is one coroutine (daphne and uvicorn alike). Behind
nginx its location must turn buffering off (deploy/nginx.conf); ``X-Accel-Buffering: no``
says so too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from .consumer import NotificationConsumer
from .origin import header, origin_allowed
from .routing import WEBSOCKET_PATH

logger = logging.getLogger("notifications.realtime")

# Seconds of silence before a comment line goes out: proxies drop idle streams (nginx after
# proxy_read_timeout), and a write is how a server notices that the client has gone.
KEEPALIVE_SECONDS = 15.0
# Seconds the consumer has for the handshake (session, hub, hello) before the stream starts.
HANDSHAKE_TIMEOUT = 30.0
_END = None


class StreamBridge:
    """The ASGI ``receive``/``send`` pair a consumer talks to, turned into a queue of frames."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str | None] = asyncio.Queue()
        self.accepted = asyncio.Event()
        self.ended = asyncio.Event()
        self.gone = asyncio.Event()
        self._connected = False

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        await self.gone.wait()
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted.set()
        elif kind == "websocket.send" and message.get("text") is not None:
            self.frames.put_nowait(message["text"])
        elif kind == "websocket.close":
            self.ended.set()
            self.frames.put_nowait(_END)


async def _started(bridge: StreamBridge) -> bool:
    """Wait until the consumer accepted (True) or refused (False) the stream."""
    accepted = asyncio.ensure_future(bridge.accepted.wait())
    ended = asyncio.ensure_future(bridge.ended.wait())
    try:
        await asyncio.wait(
            {accepted, ended}, timeout=HANDSHAKE_TIMEOUT, return_when="FIRST_COMPLETED"
        )
    finally:
        accepted.cancel()
        ended.cancel()
    return bridge.accepted.is_set()


async def _events(bridge: StreamBridge, task: asyncio.Future) -> AsyncIterator[str]:
    try:
        yield "retry: 5000\n\n"
        while True:
            try:
                text = await asyncio.wait_for(bridge.frames.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if text is _END:
                return
            yield f"data: {text}\n\n"  # encoded JSON holds no raw newline
    finally:
        # The client went away (Django cancels the response) or the server closed: either way
        # the consumer sees a disconnect and leaves the hub.
        bridge.gone.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 5)


async def stream(request: HttpRequest) -> HttpResponse:
    """``GET /sse/notifications/``: the notification stream as ``text/event-stream``."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    scope = getattr(request, "scope", None)
    if scope is None:
        return HttpResponse("the event stream needs an ASGI server", status=501)
    # A browser sends Origin on a cross-origin EventSource: refuse foreign sites as the
    # WebSocket handshake does (same-origin requests may carry none).
    origin = header(scope, b"origin")
    if origin is not None and not origin_allowed(origin):
        return HttpResponse(status=403)
    bridge = StreamBridge()
    socket_scope = {**scope, "type": "websocket", "path": WEBSOCKET_PATH, "subprotocols": []}
    # A fresh context: the request's would tie the consumer's (and, when this stream starts
    # it, the hub's) database calls to the request's thread executor, which Django shuts
    # down when the view returns, long before the stream ends.
    task = asyncio.get_running_loop().create_task(
        NotificationConsumer(socket_scope, bridge.receive, bridge.send).run(),
        context=contextvars.Context(),
    )
    if not await _started(bridge):
        bridge.gone.set()
        return HttpResponse(status=403)
    response = StreamingHttpResponse(_events(bridge, task), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response
