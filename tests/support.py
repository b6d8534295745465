"""Test helpers: a JSON WebSocket client over WebsocketCommunicator, sessions, services."""

from __future__ import annotations

import asyncio
import json
import os
import socket as socketlib
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from notifications.realtime.routing import websocket_application

# Comma-separated kinds (redis, postgres, browser, curl, nginx, hadolint, axe) whose tests
# must run, or "all".
REQUIRED = {
    kind.strip()
    for kind in os.environ.get("NOTIFICATIONS_REQUIRE_SERVICES", "").split(",")
    if kind.strip()
}


def require_service(kind: str, available: bool, reason: str) -> None:
    """Skip when a service is missing, or fail when CI said that it must be there."""
    if available:
        return
    if kind in REQUIRED or "all" in REQUIRED:
        pytest.fail(f"required service missing ({kind}): {reason}")
    pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    try:
        with socketlib.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def session_cookie(user) -> str:
    """A session cookie that signs ``user`` in, as ``Client.force_login`` would."""
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


class Socket:
    """A protocol client: send dicts, await decoded frames with a timeout."""

    def __init__(
        self,
        *,
        cookie: str | None = None,
        cursor: int | None = None,
        origin: str | None = "http://localhost:8000",
        subprotocols: list[str] | None = None,
        path: str = "/ws/notifications/",
        client: tuple[str, int] = ("127.0.0.1", 50000),
    ) -> None:
        headers = []
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        if cookie is not None:
            headers.append((b"cookie", cookie.encode()))
        if cursor is not None:
            path = f"{path}?cursor={cursor}"
        self.communicator = WebsocketCommunicator(
            websocket_application, path, headers=headers, subprotocols=subprotocols
        )
        self.communicator.scope["client"] = client
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 3) -> dict[str, Any]:
        message = await self.communicator.receive_output(timeout)
        if message["type"] == "websocket.close":
            return {"type": "__closed__", "code": message.get("code")}
        return json.loads(message["text"])

    async def expect(self, kind: str, timeout: float = 3) -> dict[str, Any]:
        frame = await self.receive(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def notifications(self, count: int, timeout: float = 3) -> list[dict[str, Any]]:
        return [await self.expect("notification", timeout) for _ in range(count)]

    async def nothing(self, timeout: float = 0.3) -> bool:
        """True when no frame arrives within ``timeout``."""
        return await self.communicator.receive_nothing(timeout=timeout, interval=0.01)

    async def closed(self, timeout: float = 3) -> int | None:
        """Await the server's close and return its code."""
        while True:
            message = await self.communicator.receive_output(timeout)
            if message["type"] == "websocket.close":
                return message.get("code")

    async def close(self) -> None:
        await self.communicator.disconnect()


async def settle(delay: float = 0.05) -> None:
    await asyncio.sleep(delay)


def away_from_a_minute_boundary(margin: float = 3.0) -> None:
    """Sleep past the end of the current calendar minute when it ends within ``margin``
    seconds: the HTTP API's rate windows are calendar minutes, and a test that expects its
    requests to share one window would otherwise fail now and then."""
    import time

    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)
