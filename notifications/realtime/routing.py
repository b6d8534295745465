"""The WebSocket application: origin check, then the consumer (which reads the session).

``websocket_application`` serves only ``/ws/notifications/`` and calls the consumer directly:
no URL resolution and no copy of the scope per socket (a URLRouter would add both, and a
coroutine frame that lives as long as the socket). To mount the consumer beside your own
routes, use ``websocket_urlpatterns`` in your URLRouter, inside ``OriginGuard`` (and, on
daphne, ``daphne_compat.SendEmptyMessages`` if your consumers send empty messages).
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import WebsocketDenier
from django.urls import path

from .consumer import NotificationConsumer
from .daphne_compat import SendEmptyMessages
from .origin import OriginGuard

WEBSOCKET_PATH = "/ws/notifications/"

websocket_urlpatterns = [
    path(WEBSOCKET_PATH.lstrip("/"), NotificationConsumer.as_asgi()),
]


async def _endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope.get("path") != WEBSOCKET_PATH:
        await WebsocketDenier()(scope, receive, send)  # an unknown path: 403
        return
    await NotificationConsumer(scope, receive, send).run()


# SendEmptyMessages: daphne drops empty messages (daphne_compat.py); the consumer never sends
# one, but a consumer mounted beside it may.
websocket_application = SendEmptyMessages(OriginGuard(_endpoint))
