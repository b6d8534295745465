"""Run an ORM query again with new values without building it again.

Building a query with Django's ORM (``Q`` objects, ``Exists`` subqueries, compiling to SQL)
costs far more than running it on an indexed table: the audience filter behind a signed-in
WebSocket ``hello`` took two thirds of a handshake's database-thread time in a profile, while
SQLite ran the statement in a fraction of that. Handshakes come in bursts (every client
reconnects after a deploy), so :class:`CompiledQuery` builds each query once per *shape* and
then only swaps parameter values.

How: the query is built once with a distinct sentinel for every variable value, and run
through ``connection.execute_wrapper``, which records the SQL and the parameter list the
backend received. Each parameter equal to a sentinel (as the field adapts it for this backend)
is a slot; later calls copy the list and fill the slots. Everything else in the list is a
constant of the shape. The ORM stays the single definition of the query: no SQL is written by
hand, and a test compares this path's answers with the ORM's on every backend the suite runs.

A shape is whatever changes the SQL text besides parameter values: a flag that adds a clause,
or the length of an ``IN`` list. The caller names it in ``shape``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import DateTimeField

_DATETIME = DateTimeField()
# Sentinels are values no real row or argument has: negative integers far below any real id,
# and instants in the year 1901. The integers stay within 32 bits: Django compiles a lookup on
# a 32-bit column (PostgreSQL's ``integer`` AutoField, auth_user.id) with a value out of its
# range to a constant false, which would drop the slot from the SQL (seen on PostgreSQL with
# ``pk=user_id`` in the audience rule's superuser check).
_INT_SENTINEL_LOW, _INT_SENTINEL_HIGH = -(2**31) + 1, -(2**30)
_sentinel_counter = itertools.count()  # next() on it is atomic (C code, under the GIL)


def _int_sentinel() -> int:
    n = next(_sentinel_counter)
    return _INT_SENTINEL_LOW + (n * 7919) % (_INT_SENTINEL_HIGH - _INT_SENTINEL_LOW)


_datetime_base = datetime(1901, 1, 1, tzinfo=UTC)


class CompiledQuery:
    """``build(shape, **values)`` runs the query through the ORM (exactly one statement);
    ``row(shape, **values)`` and ``rows(...)`` run the same SQL with other ``values``.

    Values may be ints, strings or aware datetimes (compared against ``DateTimeField``s).
    """

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build
        self._templates: dict[tuple, tuple[str, list[Any], dict[int, str]]] = {}
        self._lock = threading.Lock()

    def row(self, shape: tuple, using: str = "default", **values: Any) -> tuple | None:
        """The first row (or None) of the query run with ``values``."""
        with self._execute(shape, using, values) as cursor:
            return cursor.fetchone()

    def rows(self, shape: tuple, using: str = "default", **values: Any) -> list[tuple]:
        """Every row of the query run with ``values``."""
        with self._execute(shape, using, values) as cursor:
            return cursor.fetchall()

    @contextmanager
    def _execute(self, shape: tuple, using: str, values: dict[str, Any]) -> Iterator[Any]:
        connection = connections[using]
        key = (using, connection.vendor, shape, tuple(sorted(values)))
        template = self._templates.get(key)
        if template is None:
            with self._lock:
                template = self._templates.get(key) or self._compile(connection, shape, values)
                self._templates[key] = template
        sql, params, slots = template
        params = list(params)
        for index, name in slots.items():
            params[index] = _adapt(values[name], connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            yield cursor

    def _compile(self, connection: Any, shape: tuple, values: Mapping[str, Any]) -> tuple:
        sentinels = {name: _sentinel(value) for name, value in values.items()}
        adapted = {_key(_adapt(value, connection)): name for name, value in sentinels.items()}
        seen: list[tuple[str, list[Any]]] = []

        def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            seen.append((sql, list(params or ())))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(capture):
            self.build(shape, **sentinels)
        if len(seen) != 1:
            raise RuntimeError(f"CompiledQuery needs exactly one statement, got {len(seen)}")
        sql, params = seen[0]
        slots = {i: adapted[_key(p)] for i, p in enumerate(params) if _key(p) in adapted}
        missing = set(sentinels) - set(slots.values())
        if missing:
            raise RuntimeError(f"values not found among the parameters: {sorted(missing)}")
        return sql, params, slots


def _sentinel(value: Any) -> Any:
    if isinstance(value, bool):
        raise TypeError("a bool changes the SQL: put it in the shape")
    if isinstance(value, int):
        return _int_sentinel()
    if isinstance(value, datetime):
        return _datetime_base + timedelta(microseconds=-_int_sentinel() % 10**12)
    if isinstance(value, str):
        return f"compiled-sentinel{_int_sentinel()}"
    raise TypeError(f"unsupported value type {type(value).__name__}")


def _adapt(value: Any, connection: Any) -> Any:
    if isinstance(value, datetime):
        return _DATETIME.get_db_prep_value(value, connection)
    return value


def _key(param: Any) -> tuple[type, Any]:
    # 5 and 5.0 and True must not be confused with each other.
    try:
        hash(param)
    except TypeError:
        return (type(param), id(param))
    return (type(param), param)
