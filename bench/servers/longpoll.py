"""The long-polling baseline: what a Django site writes to replace page polling.

``GET /longpoll/?after=ID`` answers at once with the events the requester may see with
``id > ID`` (oldest first, at most 100) when there are any; otherwise it waits, up to
``TIMEOUT`` seconds, until this process hears of a new event, then reads the database once
and answers (an empty list after the timeout). ``GET /longpoll/`` without ``after`` answers at
once with the newest visible id: where a freshly loaded page starts. Every answer is a plain
``JsonResponse`` through the project's middleware: ``{"events": [...], "cursor": ID}``, each
event in the same JSON shape as the WebSocket ``notification`` frame (PROTOCOL.md), so that a
byte count of the two paths differs only by what each transport adds.

Wake-up: one listener per process on the channel layer, a member of the hubs' group
(``notifications.realtime.messages.HUB_GROUP``), so it receives the very message that
``notify()`` publishes on commit for the WebSocket hubs. Each ``notifications.event`` message
wakes every waiting request of the process; each woken request then reads the database once
(a request whose read finds nothing it may see, e.g. an event for one user, waits again). A
request takes the current wake-up before its read, so an event committed between the read and
the wait is not missed.

Nothing here is tuned: an async view, the ORM through ``sync_to_async`` (which Django runs on
a thread of the request's own, see ``ThreadSensitiveContext``), the project's middleware and
response headers, HTTP/1.1 keep-alive as the server provides it. Served by
``bench/servers/longpoll_asgi.py`` beside the project's own routes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Max
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from notifications import selectors
from notifications.realtime import frames, messages

logger = logging.getLogger(__name__)

TIMEOUT = 25.0  # seconds a request waits before it answers with an empty list
LIMIT = 100  # events per answer
GROUP_RENEW_SECONDS = 60.0  # the layer's group_expiry is 300 s


class Wakeups:
    """This process's listener: every event message on the layer wakes every waiting request."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.heard = 0

    async def started(self) -> Wakeups:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        await self.ready.wait()
        return self

    def _wake(self) -> None:
        woken, self.event = self.event, asyncio.Event()
        woken.set()

    async def _run(self) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        while True:
            renew: asyncio.Task | None = None
            try:
                channel = await layer.new_channel("longpoll.")
                await layer.group_add(messages.HUB_GROUP, channel)
                renew = asyncio.ensure_future(self._renew(layer, channel))
                self.ready.set()
                while True:
                    message = await layer.receive(channel)
                    if message.get("type") == messages.EVENT:
                        self.heard += 1
                        self._wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("long-poll listener failed; restarting in 1 s")
                self._wake()  # the waiting requests read the database once more
                await asyncio.sleep(1.0)
            finally:
                if renew is not None:
                    renew.cancel()

    @staticmethod
    async def _renew(layer: Any, channel: str) -> None:
        while True:
            await asyncio.sleep(GROUP_RENEW_SECONDS)
            await layer.group_add(messages.HUB_GROUP, channel)


_wakeups: Wakeups | None = None


async def wakeups() -> Wakeups:
    global _wakeups
    if _wakeups is None:
        _wakeups = Wakeups()
    return await _wakeups.started()


def _newest(user: Any) -> int:
    return selectors.visible_events(user).aggregate(top=Max("id"))["top"] or 0


def _load(user: Any, after: int) -> list[dict]:
    events = selectors.replay(user, after=after, upto=frames.MAX_ID, limit=LIMIT)
    return [frames.notification(e, read=e.is_read, replay=False) for e in events]


async def longpoll(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    raw = request.GET.get("after")
    if raw is None:
        return JsonResponse({"events": [], "cursor": await sync_to_async(_newest)(user)})
    try:
        after = int(raw)
        if not 0 <= after <= frames.MAX_ID:
            raise ValueError
    except ValueError:
        return JsonResponse({"error": "'after' must be a non-negative integer"}, status=400)
    hub = await wakeups()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    events: list[dict] = []
    while True:
        woken = hub.event  # taken before the read: an event committed after it wakes us
        events = await sync_to_async(_load)(user, after)
        left = deadline - loop.time()
        if events or left <= 0:
            break
        try:
            await asyncio.wait_for(woken.wait(), left)
        except TimeoutError:
            break
    return JsonResponse({"events": events, "cursor": events[-1]["id"] if events else after})


# ROOT_URLCONF of bench.servers.longpoll_settings: this view beside the project's own routes.
urlpatterns = [
    path("longpoll/", longpoll, name="longpoll"),
    path("", include("project.urls")),
]
