"""Start the process's hub with its first HTTP request, not only its first socket.

The hub runs the process's background work (the broadcast sender, presence reports). A site
served by ``make run`` may get its first WebSocket long after a member of staff scheduled a
broadcast in the admin over plain HTTP; with this wrapper the admin request itself starts it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .hub import get_hub

logger = logging.getLogger(__name__)

_started: set[int] = set()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The next request or socket tries again (Hub.ready restarts a failed start).
        _started.discard(id(get_hub()))
        logger.warning("the hub did not start: %s", task.exception())


def _start(hub: Any) -> None:
    if id(hub) not in _started:
        _started.add(id(hub))
        asyncio.ensure_future(hub.ready()).add_done_callback(_log_failure)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol (uvicorn, hypercorn): start the hub at server start, so a
    process that gets no request yet still sends its due broadcasts. Daphne does not speak
    it; there the first request or socket starts the hub."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _start(get_hub())  # not awaited: a database down at start must not stop the server
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class StartHub:
    """ASGI middleware for the HTTP app: start the hub (without waiting) on a request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        _start(get_hub())
        await self.app(scope, receive, send)
