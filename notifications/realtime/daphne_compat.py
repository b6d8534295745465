"""Send empty WebSocket messages on daphne, which drops them.

daphne 4.2 writes an application's ``websocket.send`` only when its ``text`` or ``bytes`` is
truthy (``daphne/ws_protocol.py``, ``WebSocketProtocol.handle_reply``:
``if message.get("bytes", None): ...``), so ``{"type": "websocket.send", "text": ""}`` sends
nothing, where the ASGI spec and RFC 6455 allow an empty message. Autobahn|Testsuite's cases
1.1.1, 1.2.1, 6.1.1 and 6.1.2 fail on daphne for this alone (docs/conformance.md). No upstream
issue was found; this works around it until daphne tests for ``None`` instead.

:class:`SendEmptyMessages` wraps a WebSocket ASGI application: on daphne, an empty message
goes to daphne's ``serverSend`` directly (which frames it like any other); everything else,
and every other server, is untouched. The notifications consumer never sends an empty
message (each frame is a JSON object); the wrapper is for other consumers mounted beside it,
and ``routing.websocket_application`` includes it.

The wrapped ``send`` stays a ``functools.partial`` whose first argument is daphne's protocol,
which is how ``transport.writer_for`` recognises daphne.
"""

from __future__ import annotations

import functools
from typing import Any


class SendEmptyMessages:
    """ASGI middleware: empty ``websocket.send`` messages reach the client on daphne too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "websocket":
            protocol = _daphne_protocol(send)
            if protocol is not None:
                send = functools.partial(_send, protocol, send)
        await self.app(scope, receive, send)


def _daphne_protocol(send: Any) -> Any:
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if type(protocol).__module__ == "daphne.ws_protocol" and hasattr(protocol, "sendMessage"):
            return protocol
    return None


async def _send(protocol: Any, send: Any, message: dict[str, Any]) -> None:
    if message.get("type") == "websocket.send":
        text, data = message.get("text"), message.get("bytes")
        if (text == "" and not data) or (data == b"" and not text):
            _send_empty(protocol, send, binary=text is None)
            return
    await send(message)


def _send_empty(protocol: Any, send: Any, *, binary: bool) -> None:
    """What daphne's ``Server.handle_reply`` and ``WebSocketProtocol.handle_reply`` do with a
    message, without the truthiness test."""
    server = getattr(send.func, "__self__", None)
    connection = getattr(server, "connections", {}).get(protocol)
    if connection is None or connection.get("disconnected"):
        return  # daphne ignores replies to a closed connection
    if protocol.state == protocol.STATE_CONNECTING:
        raise ValueError("Socket has not been accepted, so cannot send over it")
    protocol.serverSend(b"" if binary else "", binary)
