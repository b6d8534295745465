"""A few threads of their own for the database work of handshakes.

``database_sync_to_async`` runs every call on one shared thread (``thread_sensitive``), so a
burst of signed-in handshakes (every client reconnecting after a deploy) waits for the
session, user, membership and ``hello`` queries of each socket in turn, and the process
mostly waits for the database's answers (py-spy: psycopg's ``wait`` and ``send`` were the top
of a signed-in ramp). Handshakes mostly read (a ``?topic=`` subscription writes one row), each
in its own thread's connection, so several can wait for the database at once.
``HANDSHAKE_THREADS`` sets how many (1: the shared thread's behaviour, on a thread of its own).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync

from ..conf import notifications_settings

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=notifications_settings.HANDSHAKE_THREADS,
                thread_name_prefix="notifications-handshake",
            )
        return _executor


def handshake_reads(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` (a handshake's database work) as a coroutine on the handshake threads; old
    connections are closed around it as ``database_sync_to_async`` does."""
    runner: Any = DatabaseSyncToAsync(func, thread_sensitive=False, executor=_pool())
    return runner
