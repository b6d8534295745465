"""Graceful drain on SIGTERM: refuse new sockets, close open ones with 1012, then let the
server stop.

A deploy sends SIGTERM. The ASGI servers differ in what they do with open WebSockets then:
uvicorn closes them with 1012, daphne's reactor drops the TCP connections (the client sees
1006 and waits out its backoff). So the drain runs before the server's own handler, the same
way under both:

1. ``draining()`` turns true: ``/readyz`` answers 503 (the load balancer stops sending new
   clients) and new handshakes are refused (403, ``notifications_handshakes_total{result=
   "draining"}``);
2. after ``DRAIN_GRACE`` seconds (default 0: time for a load balancer that polls ``/readyz``
   to take the process out), every open socket of this process gets close code 1012
   ("service restart"), which the client answers by reconnecting at once, elsewhere;
3. once their consumers have finished (the close handshakes are done), or after
   ``DRAIN_TIMEOUT`` seconds, the server's own SIGTERM handler runs: it stops listening and
   exits. A second SIGTERM during the drain runs it at once.

The handler is installed from the event loop's thread when the hub starts and on ``/readyz``,
that is after the server installed its own handler, and only when there is one to chain to (a
Python callable: uvicorn's, Twisted's for daphne and ``runserver --noreload``). Under
``runserver`` with the autoreloader the server runs outside the main thread, where Python
allows no signal handler: no drain there (development only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

from ..conf import notifications_settings

logger = logging.getLogger("notifications.realtime")

CLOSE_SERVICE_RESTART = 1012

_draining = False
_previous: Any = None
_installed_handler: Any = None
_loop: asyncio.AbstractEventLoop | None = None
# Consumers whose run() has not returned (their sockets may still be closing).
running: set[Any] = set()


def draining() -> bool:
    """True once this process has received SIGTERM and is draining."""
    return _draining


def install() -> bool:
    """Chain the drain in front of the server's SIGTERM handler; True when it is in place.

    Call it from the event loop's thread (the main thread); a no-op elsewhere, when already
    installed, or when the current handler is not a Python callable (no server handler)."""
    global _previous, _installed_handler, _loop
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _installed_handler and _installed_handler is not None:
        _loop = loop
        return True
    if not callable(current):
        return False
    _previous, _loop = current, loop
    _installed_handler = _on_sigterm
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _on_sigterm(signum: int, frame: Any) -> None:
    global _draining
    if _draining or _loop is None or _loop.is_closed():
        _chain(signum, frame)  # a second SIGTERM, or no loop to drain on: stop now
        return
    _draining = True
    _loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_drain(signum, frame)))


async def _drain(signum: int, frame: Any) -> None:
    from .hub import _hub

    try:
        if notifications_settings.DRAIN_GRACE:
            await asyncio.sleep(notifications_settings.DRAIN_GRACE)
        conns = list(_hub.connections) if _hub is not None else []
        logger.warning("drain: SIGTERM, closing %d sockets with 1012", len(conns))
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close(CLOSE_SERVICE_RESTART)
        deadline = time.monotonic() + notifications_settings.DRAIN_TIMEOUT
        while running and time.monotonic() < deadline:
            # The close handshakes finish as the clients answer; daphne's shutdown would
            # drop close frames still in its write buffers.
            await asyncio.sleep(0.02)
    finally:
        _chain(signum, frame)


def _chain(signum: int, frame: Any) -> None:
    previous = _previous
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
