"""Threads of their own for the database work of handshakes.

``database_sync_to_async`` runs every call on one shared thread (``thread_sensitive``), where
the hub's own reads (polls, replays, session checks) also queue. Handshakes run their
database work in batches (``batching.py``) on this pool instead, each thread with its own
connection. ``HANDSHAKE_THREADS`` sets how many; one is the default and was the fastest on a
nearby database (more threads fight the event loop for the GIL).

On PostgreSQL these connections run with ``jit = off``: a batch of handshakes
(``batching.py``) runs the membership and ``hello`` statements once per user through
``CROSS JOIN LATERAL unnest(...)``, whose estimated cost grows with the batch, and above
``jit_above_cost`` PostgreSQL spent 70-450 ms compiling a statement that runs in 2-4 ms
(``EXPLAIN ANALYZE`` of a batch of 100-200 users). Only these threads' connections are
changed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync
from django.db import connection

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

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        _configure(connection)
        return func(*args, **kwargs)

    runner: Any = DatabaseSyncToAsync(run, thread_sensitive=False, executor=_pool())
    return runner


_configured: weakref.WeakSet[Any] = weakref.WeakSet()  # psycopg connections with jit off


def _configure(db: Any) -> None:
    if db.vendor != "postgresql":
        return
    db.close_if_health_check_failed()
    db.ensure_connection()
    if db.connection in _configured:
        return
    with db.cursor() as cursor:
        cursor.execute("SET jit = off")
    _configured.add(db.connection)
