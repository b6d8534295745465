"""ASGI entry of the long-poll baseline: ``project.asgi:application`` (Django for HTTP, the
notifications consumer for WebSocket) with ``bench.servers.longpoll_settings``, whose URLconf
adds ``/longpoll/`` (``bench/servers/longpoll.py``) to the project's routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.servers.longpoll_settings")

from project.asgi import application

__all__ = ["application"]
