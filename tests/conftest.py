"""Shared fixtures: users, authenticated WebSocket clients, the hub, optional services."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from notifications.realtime.hub import reset_hub

from .support import Socket, require_service, session_cookie  # noqa: F401

pytest_plugins = ["notifications.testing"]


@pytest.fixture(autouse=True)
async def _fresh_hub():
    """Every test gets its own hub (the hub belongs to one event loop)."""
    await reset_hub()
    yield
    await reset_hub()


@pytest.fixture(autouse=True)
def _fresh_purge_watermark():
    """The watermark a process caches belongs to the test that read it."""
    from notifications import retention

    retention._cache.forget()


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


def pytest_configure(config):
    from django.conf import settings

    # Hashing real passwords costs ~0.2 s a user; tests do not need it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup, django_db_blocker):
    """Let the test database be dropped: end connections that worker threads left open."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
