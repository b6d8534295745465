"""Stock Django Channels group fan-out, the peer baseline: one consumer per socket.

Each ``AsyncJsonWebsocketConsumer`` joins the group named by ``BENCH_GROUP`` on connect and
sends the payload of every group message it gets, as the Channels tutorial does. The emitter
calls ``group_send`` on the same channels-redis layer. Served by daphne:

``DJANGO_SETTINGS_MODULE=bench.servers.stock_settings daphne bench.servers.stock_asgi:application``
"""

from __future__ import annotations

import os
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

GROUP = os.environ.get("BENCH_GROUP", "bench")


class BenchConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send_json(
            {"type": "hello", "protocol": 1, "user": None, "unread": None, "cursor": 0}
        )

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])
