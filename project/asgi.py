"""ASGI entry point: Django for HTTP, the notifications consumer for WebSocket."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Set up Django (apps, settings) before importing anything that touches models.
django_http = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from notifications.realtime.routing import websocket_application  # noqa: E402
from notifications.realtime.startup import StartHub, lifespan  # noqa: E402

# The hub, and with it the broadcast sender, starts with the server (lifespan: uvicorn) or its
# first request (StartHub: daphne), not only with the first socket (docs/admin.md).
application = ProtocolTypeRouter(
    {"http": StartHub(django_http), "websocket": websocket_application, "lifespan": lifespan}
)
