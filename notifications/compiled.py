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

On PostgreSQL the statement also runs prepared (``PREPARED_QUERIES``): PostgreSQL spent
0.9-1.3 ms planning the membership and ``hello`` queries and 0.1-0.2 ms running them, on every
handshake. Django turns psycopg's prepared statements off (``prepare_threshold=None``, so that
transaction-pooling proxies keep working) and binds parameters on the client, which never
prepares; this module runs only its own statements through a server-binding cursor with
preparing allowed for that one call, inside Django's cursor wrapper (so ``execute_wrapper``
hooks still see them). While Django logs queries (``DEBUG``) they run unprepared, so that
the log shows their SQL.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import DateTimeField

from .conf import notifications_settings

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
        self._each: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def row(self, shape: tuple, using: str = "default", **values: Any) -> tuple | None:
        """The first row (or None) of the query run with ``values``."""
        with self._execute(shape, using, values) as cursor:
            return cursor.fetchone()

    def rows(self, shape: tuple, using: str = "default", **values: Any) -> list[tuple]:
        """Every row of the query run with ``values``."""
        with self._execute(shape, using, values) as cursor:
            return cursor.fetchall()

    def rows_each(
        self, shape: tuple, each: Sequence[Mapping[str, Any]], using: str = "default"
    ) -> list[list[tuple]]:
        """``[self.rows(shape, **values) for values in each]``; on PostgreSQL in one statement.

        For the handshakes that arrive together (``realtime/batching.py``): the query runs once
        per item of ``unnest(<one array per value>)`` through ``CROSS JOIN LATERAL``, so a
        batch costs one round trip and one (prepared) statement instead of one per item. Every
        item must have the same value names; rows within one item come in no set order.
        """
        if not each:
            return []
        connection = connections[using]
        if connection.vendor != "postgresql" or len(each) == 1:
            return [self.rows(shape, using, **values) for values in each]
        names = tuple(sorted(each[0]))
        key = (using, "each", shape, names)
        sql = self._each.get(key)
        if sql is None:
            template = self._template(connection, shape, each[0], using)
            with self._lock:
                sql = self._each.get(key) or _lateral_sql(connection, template, each[0])
                self._each[key] = sql
        arrays = [[_adapt(values[name], connection) for values in each] for name in names]
        answers: list[list[tuple]] = [[] for _ in each]
        with _cursor(connection) as cursor:
            cursor.execute(sql, arrays)
            for index, *row in cursor.fetchall():
                answers[index - 1].append(tuple(row))
        return answers

    def _template(
        self, connection: Any, shape: tuple, values: Mapping[str, Any], using: str
    ) -> tuple[str, list[Any], dict[int, str]]:
        key = (using, connection.vendor, shape, tuple(sorted(values)))
        template = self._templates.get(key)
        if template is None:
            with self._lock:
                template = self._templates.get(key) or self._compile(connection, shape, values)
                self._templates[key] = template
        return template

    @contextmanager
    def _execute(self, shape: tuple, using: str, values: dict[str, Any]) -> Iterator[Any]:
        connection = connections[using]
        sql, params, slots = self._template(connection, shape, values, using)
        params = list(params)
        for index, name in slots.items():
            params[index] = _adapt(values[name], connection)
        with _cursor(connection) as cursor:
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


_PLACEHOLDER = re.compile(r"(%%|%s)")


def _array_type(value: Any) -> str:
    # The value types CompiledQuery takes (_sentinel refuses others).
    if isinstance(value, datetime):
        return "timestamptz"
    return "text" if isinstance(value, str) else "bigint"


def _lateral_sql(connection: Any, template: tuple, values: Mapping[str, Any]) -> str:
    """The template's statement run once per element of arrays of values (PostgreSQL):
    each slot reads its value from the ``unnest`` row, each constant is written into the
    SQL as a literal (psycopg quotes it), so that the statement's only parameters are the
    arrays."""
    from psycopg import sql as pgsql

    sql, params, slots = template
    names = sorted(values)
    connection.ensure_connection()
    raw = connection.connection
    pieces, index = [], 0
    for piece in _PLACEHOLDER.split(sql):
        if piece != "%s":
            pieces.append(piece)
            continue
        if index in slots:
            pieces.append(f'v."{slots[index]}"')
        else:
            pieces.append(pgsql.Literal(params[index]).as_string(raw).replace("%", "%%"))
        index += 1
    arrays = ", ".join(f"%s::{_array_type(values[name])}[]" for name in names)
    columns = ", ".join(f'"{name}"' for name in names)
    return (
        f'SELECT v."_index", q.* FROM unnest({arrays}) WITH ORDINALITY AS v({columns}, "_index") '
        f"CROSS JOIN LATERAL ({''.join(pieces)}) AS q"
    )


@contextmanager
def _cursor(connection: Any) -> Iterator[Any]:
    if _prepares(connection):
        with _prepared_cursor(connection) as cursor:
            yield cursor
    else:
        with connection.cursor() as cursor:
            yield cursor


def _prepares(connection: Any) -> bool:
    if connection.vendor != "postgresql" or connection.queries_logged:
        # Logged queries (DEBUG, CaptureQueriesContext, the debug toolbar) run unprepared:
        # Django cannot show the SQL of a prepared run (psycopg keeps no query text for it).
        return False
    wanted = notifications_settings.PREPARED_QUERIES
    if wanted is None:
        wanted = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS", False)
    if not wanted:
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return is_psycopg3  # psycopg2 has no prepared statements


@contextmanager
def _prepared_cursor(connection: Any) -> Iterator[Any]:
    """``connection.cursor()`` (Django's wrapper, health check and time zone included) over a
    server-binding psycopg cursor that prepares what it runs."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    factory, threshold = raw.cursor_factory, raw.prepare_threshold
    # 0: prepare on the first run. For this cursor only: both are put back before anything
    # else runs on this connection (a connection belongs to one thread), so Django's own
    # cursors keep binding on the client and never prepare.
    raw.cursor_factory, raw.prepare_threshold = ServerBindingCursor, 0
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        raw.cursor_factory, raw.prepare_threshold = factory, threshold


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
