"""Shared fixtures: users, authenticated WebSocket clients, the hub, optional services."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from notifications.realtime.hub import reset_hub

from .support import Socket, require_service, session_cookie  # noqa: F401


@pytest.fixture(autouse=True)
async def _fresh_hub():
    """Every test gets its own hub (the hub belongs to one event loop)."""
    await reset_hub()
    yield
    await reset_hub()


@pytest.fixture(autouse=True)
def _fresh_limits():
    from notifications.realtime import consumer

    consumer._limiter = consumer.RateLimiter()


def _create_user(username: str, **fields):
    return get_user_model().objects.create_user(
        username=username, password="pw-" + username, **fields
    )


@pytest.fixture
def make_user():
    """Sync tests: ``make_user("alice", is_staff=True)``."""
    return _create_user


@pytest.fixture
def amake_user():
    """Async tests: ``await amake_user("alice")``."""
    return database_sync_to_async(_create_user)


@pytest.fixture
def connect():
    """``await connect(user=None, cursor=None, **kw)`` opens a socket and awaits ``hello``."""
    opened: list[Socket] = []

    async def open_socket(user=None, *, cursor=None, hello=True, **kwargs) -> Socket:
        cookie = await database_sync_to_async(session_cookie)(user) if user is not None else None
        socket = Socket(cookie=cookie, cursor=cursor, **kwargs)
        opened.append(socket)
        connected, _ = await socket.communicator.connect(timeout=5)
        assert connected, "the handshake was refused"
        if hello:
            socket.hello = await socket.expect("hello")
        return socket

    yield open_socket
    for socket in opened:
        try:
            from asgiref.sync import async_to_sync

            async_to_sync(socket.communicator.disconnect)()
        except Exception:
            pass
