"""ASGI application of the stock Channels baseline (see stock_channels.py)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.servers.stock_settings")
django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .stock_channels import BenchConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {"websocket": URLRouter([path("ws/notifications/", BenchConsumer.as_asgi())])}
)
