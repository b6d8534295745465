"""The WebSocket application: origin check, session auth, then the consumer."""

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.urls import path

from .consumer import NotificationConsumer
from .origin import OriginGuard

websocket_urlpatterns = [
    path("ws/notifications/", NotificationConsumer.as_asgi()),
]

websocket_application = OriginGuard(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
