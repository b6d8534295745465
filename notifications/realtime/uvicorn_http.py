"""uvicorn's httptools protocol with a deadline on the request head.

uvicorn has no timeout on receiving a request: its keep-alive timer runs only between requests
and is cancelled by the first byte, and a connection that sends nothing at all is never timed
out. So a client that opens a socket and sends half an upgrade request, or one byte a minute,
holds a connection (and a file descriptor) forever: the classic slowloris. uvicorn's planned
``--timeout-request-start`` was never built (https://github.com/Kludex/uvicorn/issues/157).

This subclass arms one timer when the connection opens and again when a keep-alive connection
waits for its next request, and disarms it when the request head is complete (for a WebSocket
upgrade that is the moment the handshake reaches the application). A client that has not sent
a complete head by then is disconnected. Select it with::

    uvicorn project.asgi:application --http notifications.realtime.uvicorn_http:HttpToolsProtocol

The deadline is ``NOTIFICATIONS["REQUEST_HEAD_TIMEOUT"]`` (seconds; ``None`` turns it off).
This module must not touch Django settings at import time: uvicorn imports the protocol class
before the application, so the value is read at the first connection.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

logger = logging.getLogger("notifications.realtime")

_UNSET = object()


def _head_timeout() -> float | None:
    from notifications.conf import notifications_settings

    return notifications_settings.REQUEST_HEAD_TIMEOUT


class HttpToolsProtocol(_HttpToolsProtocol):
    """:class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` plus a head deadline."""

    head_timeout: float | object | None = _UNSET
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # A keep-alive connection now waits for its next request head.
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        cls = type(self)
        if cls.head_timeout is _UNSET:
            cls.head_timeout = _head_timeout()
        if cls.head_timeout is None:
            return
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(cls.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            client = self.client[0] if self.client else None
            logger.info("request head not complete within %ss; closed client=%s",
                        self.head_timeout, client)  # fmt: skip
            self.transport.close()
