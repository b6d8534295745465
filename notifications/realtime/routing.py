"""The WebSocket application: origin check, then the consumer (which reads the session)."""

from channels.routing import URLRouter
from django.urls import path

from .consumer import NotificationConsumer
from .origin import OriginGuard

websocket_urlpatterns = [
    path("ws/notifications/", NotificationConsumer.as_asgi()),
]

websocket_application = OriginGuard(URLRouter(websocket_urlpatterns))
