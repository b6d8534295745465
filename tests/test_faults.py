"""Faults with real processes (issue 4, "Faults"): a server killed with SIGKILL, a Redis restart,
the database cut off, and concurrent writers with reconnecting clients.

Every test ends the same way: each client's received ids are compared with the database, i.e.
the committed notification ids its user's audience covers (as the sender recorded them),
which must all have arrived exactly once, in strictly increasing order on each connection,
with the replay before any live frame (``ResumingClient.problems``).

Covered elsewhere and not repeated here: a transaction rolled back after ``notify()``
(``tests/test_delivery.py::test_rollback_publishes_and_stores_nothing``) and two transactions
committing in the opposite order of their ids
(``tests/test_delivery.py::test_out_of_order_commit_is_never_skipped``).

Redis tests start their own ``redis-server`` on a free port (never the shared 6379); the
database outage uses a TCP proxy in front of PostgreSQL, or on SQLite a symlinked folder that
disappears. See docs/security.md, "Faults".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as db
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import override_settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from notifications import Audience, notify
from notifications.models import Event, Reach, Subscription, Topic
from notifications.realtime import publish
from notifications.realtime.messages import HUB_GROUP
from notifications.selectors import visible_events

from .faultkit import (
    RedisServer,
    ResumingClient,
    TcpProxy,
    async_wait_until,
    expected_ids,
    redis_layers,
    wait_until,
)
from .server import ServerProcess, database_url, manage
from .support import require_service, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server, pytest.mark.asyncio]

NAMES = ("alice", "bob", "carol", "dave")
# Audience label -> the users it covers (alice and bob are in "ops"; carol follows "deploys").
AUDIENCES = {
    "alice": frozenset({"alice"}),
    "bob": frozenset({"bob"}),
    "carol": frozenset({"carol"}),
    "dave": frozenset({"dave"}),
    "bob+dave": frozenset({"bob", "dave"}),
    "ops": frozenset({"alice", "bob"}),
    "deploys": frozenset({"carol"}),
    "everyone": frozenset(NAMES),
    "authenticated": frozenset(NAMES),
}
LABELS = sorted(AUDIENCES)


def need_redis() -> None:
    require_service(
        "redis",
        RedisServer.available(),
        "needs redis-server on PATH to run a private Redis on a free port "
        "(apt-get install redis-server)",
    )


def need_postgres() -> None:
    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "runs on PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )


@dataclass
class Cast:
    """Four users with sessions, a group, a topic, and what was sent to whom."""

    users: dict[str, object]
    cookies: dict[str, str]
    ops: Group
    deploys: Topic
    sent: dict[int, frozenset[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def recipients(self, label: str):
        if label in self.users:
            return self.users[label]
        return {
            "bob+dave": [self.users["bob"], self.users["dave"]],
            "ops": self.ops,
            "deploys": self.deploys,
            "everyone": "everyone",
            "authenticated": Audience(reach=Reach.AUTHENTICATED),
        }[label]

    def send(self, label: str, title: str = "fault test") -> int:
        """notify() and record its audience (whether or not the transaction commits)."""
        event_id = notify(self.recipients(label), title, data={"label": label}).id
        with self.lock:
            self.sent[event_id] = AUDIENCES[label]
        return event_id

    def expected(self) -> dict[str, set[int]]:
        """Per user, the committed ids its audience covers; checked against the app's view."""
        committed = set(Event.objects.values_list("id", flat=True))
        assert committed <= set(self.sent), "an event the test did not send"
        per_user = expected_ids(self.sent, committed)
        for name, user in self.users.items():
            visible = set(visible_events(user).values_list("id", flat=True))
            assert visible == per_user.get(name, set()), f"{name}: audience disagrees"
        return per_user


def make_cast() -> Cast:
    users = {
        name: get_user_model().objects.create_user(name, password="pw-" + name) for name in NAMES
    }
    ops = Group.objects.create(name="ops")
    ops.user_set.add(users["alice"], users["bob"])
    deploys = Topic.objects.create(name="Deploys", slug="deploys")
    Subscription.objects.create(user=users["carol"], topic=deploys)
    cookies = {name: session_cookie(user) for name, user in users.items()}
    return Cast(users=users, cookies=cookies, ops=ops, deploys=deploys)


def check(cast: Cast, clients: list[ResumingClient]) -> None:
    expected = cast.expected()
    problems = [p for c in clients for p in c.problems(expected.get(c.name, set()))]
    assert not problems, "\n".join(problems)


async def finish(cast: Cast, clients: list[ResumingClient], tasks, timeout: float = 20) -> int:
    """Send a sentinel to everyone and wait until every client has it (then it has all)."""
    sentinel = await db(cast.send)("everyone", "sentinel")
    for client in clients:
        client.churn = False
        client.sentinel = sentinel
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except TimeoutError:
        status = {c.name: (c.cursor, len(c.visits), c.failed_attempts[-3:]) for c in clients}
        raise AssertionError(f"clients did not reach the sentinel {sentinel}: {status}") from None
    return sentinel


@contextlib.asynccontextmanager
async def redis_in_test_process(url: str):
    """notify() in the test process publishes through the private Redis, as a worker would."""
    with override_settings(CHANNEL_LAYERS=redis_layers(url)):
        try:
            yield
        finally:
            layer = get_channel_layer()
            with contextlib.suppress(Exception):
                # close_pools: channels_redis.core; flush closes the pub/sub layer's connections.
                await (layer.close_pools() if hasattr(layer, "close_pools") else layer.flush())


@contextlib.asynccontextmanager
async def running(*servers: ServerProcess):
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        yield servers
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


async def start_clients(clients: list[ResumingClient]) -> list[asyncio.Task]:
    tasks = [asyncio.ensure_future(client.run()) for client in clients]
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 20)
    return tasks


def cancel(tasks) -> None:
    for task in tasks:
        task.cancel()


class Captured(logging.Handler):
    """Records of the project's loggers (they do not propagate to the root, so no caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Captured:
        logging.getLogger("notifications").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("notifications").removeHandler(self)


# 1. kill -9 ---------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_server_killed_with_sigkill_clients_resume_on_another_process():
    """Two processes share the private Redis and the database. Clients on A; SIGKILL A in the
    middle of a stream; the clients fail over to B with their cursor and end with every
    committed notification of their audience, once."""
    need_redis()
    cast = await db(make_cast)()
    rng = random.Random(4)
    with RedisServer() as redis:
        env = {"REDIS_URL": redis.url, "NOTIFICATIONS_POLL_INTERVAL": "0.5"}
        a, b = ServerProcess(**env), ServerProcess(**env)
        async with redis_in_test_process(redis.url), running(a, b):
            clients = [
                ResumingClient(name, [a.ws_url, b.ws_url], cookie=cast.cookies[name])
                for name in NAMES
            ]
            tasks = await start_clients(clients)
            try:
                killer = None
                for i in range(90):
                    await db(cast.send)(rng.choice(LABELS), f"#{i}")
                    if i == 30:  # A dies while events are being fanned out
                        killer = asyncio.create_task(asyncio.to_thread(a.stop, signal.SIGKILL))
                    await asyncio.sleep(0.01)  # a steady stream, not a burst
                await killer
                await finish(cast, clients, tasks)
            finally:
                cancel(tasks)
            assert a.process.returncode == -signal.SIGKILL
        for client in clients:
            assert client.visits[0].url == a.ws_url and client.visits[-1].url == b.ws_url
            assert "closed by server" in client.visits[0].end, client.visits[0].end
            assert client.visits[-1].cursor is not None
        await db(check)(cast, clients)


# 2. Redis restart -----------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_restart_during_a_stream():
    """Stop the private Redis (SIGTERM) in the middle of a stream, keep sending, start it again
    on the same port.

    Two server processes: ``layer_only`` polls the database once a minute, so what reaches its
    sockets comes through Redis (or a gap read that a Redis message triggers): its clients
    prove that delivery resumes by itself. ``polling`` polls every 0.3 s: its clients get the
    events sent during the outage while Redis is still down, and a client that reconnects to
    it during the outage gets them by replay.
    """
    need_redis()
    cast = await db(make_cast)()
    redis = RedisServer().start()
    layer_only = ServerProcess(REDIS_URL=redis.url, NOTIFICATIONS_POLL_INTERVAL="60")
    polling = ServerProcess(REDIS_URL=redis.url, NOTIFICATIONS_POLL_INTERVAL="0.3")
    try:
        async with redis_in_test_process(redis.url), running(layer_only, polling):
            alice = ResumingClient("alice", [layer_only.ws_url], cookie=cast.cookies["alice"])
            bob = ResumingClient("bob", [polling.ws_url], cookie=cast.cookies["bob"])
            # carol starts on layer_only and moves to polling when the test drops her socket.
            carol = ResumingClient(
                "carol", [layer_only.ws_url, polling.ws_url], cookie=cast.cookies["carol"]
            )
            dave = ResumingClient("dave", [polling.ws_url], cookie=cast.cookies["dave"])
            clients = [alice, bob, carol, dave]
            tasks = await start_clients(clients)
            try:
                # A hub starts (and joins the group) with its first socket.
                await asyncio.to_thread(
                    wait_for_group, redis, 2, "both hubs joined the group", timeout=10
                )
                rng = random.Random(2)
                # Before: Redis up.
                before = [await db(cast.send)(rng.choice(LABELS)) for _ in range(8)]
                marker = await db(cast.send)("everyone", "before the outage")
                await reached(clients, marker, 5)

                # Outage: notify() keeps working; publishing fails and is logged.
                await asyncio.to_thread(redis.stop)
                down_since = time.monotonic()
                with Captured() as logs:
                    durations, during = [], []
                    for _ in range(10):
                        started = time.monotonic()
                        during.append(await db(cast.send)(rng.choice(LABELS), "during"))
                        durations.append(time.monotonic() - started)
                    marker = await db(cast.send)("everyone", "during the outage")
                    # notify() does not wait for the layer; the failures are logged as the
                    # sends end.
                    await asyncio.to_thread(publish.flush)
                assert sum("publish failed" in m for m in logs.messages) == 11, logs.messages
                stored = await db(Event.objects.filter(id__in=[*during, marker]).count)()
                assert stored == len(during) + 1, "a notification sent during the outage is lost"
                assert max(durations) < 2, f"notify() blocked while Redis was down: {durations}"
                # The polling process delivers them from the database while Redis is down.
                await reached([bob, dave], marker, 5)
                # Replay: carol reconnects (to the polling process) and gets what she missed.
                carol.drop(switch=True)
                await reached([carol], marker, 5)
                missed = sorted(i for i in [*during, marker] if "carol" in cast.sent[i])
                replayed = [f["id"] for f in carol.visits[1].frames if f.get("replay")]
                assert carol.visits[1].url == polling.ws_url and replayed == missed
                # Nothing can reach layer_only yet: no Redis, and its poll is a minute away.
                assert alice.cursor < min(during), "layer_only had another path"

                # Keep it down for a few of the listen loop's 1 s retries, then bring it back
                # empty, on the same port: each hub's listen loop re-joins the group.
                await asyncio.sleep(max(0.0, down_since + OUTAGE - time.monotonic()))
                await asyncio.to_thread(redis.start)
                await asyncio.to_thread(
                    wait_for_group, redis, 2, "both hubs re-joined the group", timeout=10
                )
                after = [await db(cast.send)(rng.choice(LABELS), "after") for _ in range(8)]
                marker = await db(cast.send)("everyone", "after the outage")
                # alice gets it through Redis only: delivery resumed by itself.
                await reached(clients, marker, 5)
                assert before and during and after
                await finish(cast, clients, tasks)
            finally:
                cancel(tasks)
    finally:
        redis.__exit__()
    await db(check)(cast, clients)


OUTAGE = 3.5  # seconds without Redis


def wait_for_group(redis: RedisServer, size: int, what: str, timeout: float) -> None:
    def joined() -> bool:
        try:
            return redis.group_size(HUB_GROUP) >= size
        except OSError:
            return False

    wait_until(joined, timeout=timeout, interval=0.1, what=what)


async def reached(clients: list[ResumingClient], event_id: int, timeout: float) -> None:
    await async_wait_until(
        lambda: all(c.cursor is not None and c.cursor >= event_id for c in clients),
        timeout=timeout,
        what=f"{[c.name for c in clients]} receive {event_id}: "
        f"{[(c.name, c.cursor) for c in clients]}",
    )


# 3. Database unavailable ---------------------------------------------------------------------


class ProxiedPostgres:
    """The server reaches PostgreSQL through a TCP proxy that the test can cut: its persistent
    connections are reset and new ones refused, as when the database host goes down."""

    server_env: dict[str, str] = {}

    def __init__(self) -> None:
        settings = connection.settings_dict
        self.proxy = TcpProxy(("127.0.0.1", int(settings.get("PORT") or 5432))).start()
        self.url = database_url().replace(
            f":{settings.get('PORT') or 5432}/", f":{self.proxy.port}/"
        )
        assert str(self.proxy.port) in self.url

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def close(self) -> None:
        self.proxy.close()


class VanishingSqlite:
    """The server opens the SQLite file through a symlinked folder that the test removes: new
    connections then fail with "unable to open database file", as with a lost volume.

    An open SQLite connection keeps its file whatever happens to the path, so the server runs
    with ``DATABASE_CONN_MAX_AGE=0`` here (a connection per use): the same code paths fail
    (poll, session check, handshake) as on PostgreSQL, where the proxy resets the persistent
    connections.
    """

    server_env = {"DATABASE_CONN_MAX_AGE": "0"}

    def __init__(self) -> None:
        real = Path(connection.settings_dict["NAME"]).resolve()
        self.folder = Path(tempfile.mkdtemp(prefix="fault-db-"))
        self.link = self.folder / "db"
        self.target = real.parent
        os.symlink(self.target, self.link)
        self.url = f"sqlite:///{self.link / real.name}"

    def cut(self) -> None:
        self.link.unlink()

    def restore(self) -> None:
        os.symlink(self.target, self.link)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.folder.rmdir()


NOTIFY_IN_ANOTHER_PROCESS = """
from notifications import notify
try:
    notify("everyone", "sent while the database is down")
except Exception as exc:
    print("RAISED", type(exc).__module__ + "." + type(exc).__name__)
else:
    print("NO EXCEPTION")
"""


# "poll": no shared layer, the hub's database poll is the only path to the sockets.
# "redis": events come through the private Redis, so they need no database to reach sockets.
LAYERS = ["poll", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.mark.postgres
@pytest.mark.parametrize("layer", LAYERS)
async def test_database_outage_postgres_behind_a_proxy(layer):
    need_postgres()
    database = await asyncio.to_thread(ProxiedPostgres)
    try:
        await database_outage(database, layer)
    finally:
        await asyncio.to_thread(database.close)


@pytest.mark.parametrize("layer", LAYERS)
async def test_database_outage_sqlite_folder_gone(layer):
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite variant; on PostgreSQL the proxy variant runs")
    database = VanishingSqlite()
    try:
        await database_outage(database, layer)
    finally:
        database.close()


async def database_outage(database, layer: str) -> None:
    """The server's database goes away and comes back (the test process keeps its own)."""
    if layer == "redis":
        need_redis()
        with RedisServer() as redis:
            async with redis_in_test_process(redis.url):
                await _database_outage(database, {"REDIS_URL": redis.url})
    else:
        await _database_outage(database, {})


async def _database_outage(database, layer_env: dict[str, str]) -> None:
    cast = await db(make_cast)()
    server = ServerProcess(
        DATABASE_URL=database.url,
        NOTIFICATIONS_POLL_INTERVAL="0.3",
        NOTIFICATIONS_SESSION_CHECK_INTERVAL="0.5",
        **database.server_env,
        **layer_env,
    )
    async with running(server):
        alice = ResumingClient("alice", [server.ws_url], cookie=cast.cookies["alice"])
        tasks = await start_clients([alice])
        try:
            first = await db(cast.send)("alice", "before")
            await reached([alice], first, 5)

            await asyncio.to_thread(database.cut)
            # The hub's database work fails meanwhile (its poll, the session check) ...
            await async_wait_until(
                lambda: (
                    "hub poll failed" in server.output()
                    and "session check failed" in server.output()
                ),
                timeout=8,
                what="the hub's poll and session check ran while the database was down",
            )
            # ... and the open socket stays: ping gets pong (no database needed).
            assert alice.connected.is_set() and len(alice.visits) == 1
            assert await alice.ping() == {"type": "pong", "ref": "fault-ping"}
            # Events committed by others meanwhile (the test process's database is up).
            during = [await db(cast.send)(label, "during") for label in ("alice", "everyone")]
            if layer_env:
                # Through Redis they reach the open socket at once: fan-out needs no database.
                await reached([alice], max(during), 5)

            # A new handshake needs the session (database): it fails cleanly, and soon.
            started = time.monotonic()
            outcome = await handshake_outcome(server, cast.cookies["bob"])
            elapsed = time.monotonic() - started
            assert outcome.startswith(("http 500", "http 403", "closed before hello")), outcome
            assert elapsed < 5, f"the refused handshake took {elapsed:.1f}s"

            # notify() in a process whose database is down raises in the caller.
            result = await asyncio.to_thread(
                manage, "shell", "-c", NOTIFY_IN_ANOTHER_PROCESS, DATABASE_URL=database.url
            )
            assert "RAISED django.db.utils.OperationalError" in result.stdout, (
                result.stdout + result.stderr
            )

            await asyncio.to_thread(database.restore)
            # The open socket gets what was committed meanwhile (the poll recovered) ...
            await reached([alice], max(during), 8)
            # ... a new handshake works, and notifications flow again.
            bob = ResumingClient("bob", [server.ws_url], cookie=cast.cookies["bob"])
            tasks += await start_clients([bob])
            await db(cast.send)("ops", "after")
            await finish(cast, [alice, bob], tasks)
        finally:
            cancel(tasks)
    assert len(alice.visits) == 1, "the open socket was closed during the outage"
    await db(check)(cast, [alice, bob])


async def handshake_outcome(server: ServerProcess, cookie: str, timeout: float = 10) -> str:
    """How a new signed-in handshake ends: accepted (hello), an HTTP status, or a close."""
    try:
        async with ws_connect(
            server.ws_url,
            origin=server.origin,
            additional_headers={"Cookie": cookie},
            open_timeout=timeout,
            close_timeout=2,
        ) as ws:
            try:
                frame = await asyncio.wait_for(ws.recv(), timeout)
            except ConnectionClosed as exc:
                return f"closed before hello ({exc.rcvd.code if exc.rcvd else None})"
            return f"accepted: {frame}"
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"


# 4. Concurrent writers, reconnecting clients ---------------------------------------------------


class Rollback(Exception):
    pass


def write_randomly(cast: Cast, rng: random.Random, until: float, tally: dict, errors: list):
    """One writer: transactions of 1-3 notify() calls, a quarter of them rolled back."""
    try:
        for _ in range(40):
            if time.monotonic() > until:
                break
            try:
                with transaction.atomic():
                    for _ in range(rng.randint(1, 3)):
                        cast.send(rng.choice(LABELS), "concurrent")
                        time.sleep(rng.uniform(0, 0.01))  # work while holding the stream lock
                    if rng.random() < 0.25:
                        raise Rollback
                with cast.lock:
                    tally["committed"] += 1
            except Rollback:
                with cast.lock:
                    tally["rolled back"] += 1
            time.sleep(rng.uniform(0, 0.03))  # think time between transactions
    except Exception as exc:  # reported by the test
        errors.append(repr(exc))
    finally:
        connection.close()


@pytest.mark.redis
async def test_concurrent_writers_and_reconnecting_clients_randomized():
    """Four writer threads commit and roll back transactions of random length while four
    clients hop between two server processes at random moments, each resuming from the
    highest id it received. Seeded (FAULTS_SEED); bounded to a few seconds of writing."""
    need_redis()
    seed = int(os.environ.get("FAULTS_SEED", "4004"))
    master = random.Random(seed)
    cast = await db(make_cast)()
    with RedisServer() as redis:
        env = {"REDIS_URL": redis.url, "NOTIFICATIONS_POLL_INTERVAL": "1"}
        s1, s2 = ServerProcess(**env), ServerProcess(**env)
        async with redis_in_test_process(redis.url), running(s1, s2):
            clients = [
                ResumingClient(
                    name,
                    [s1.ws_url, s2.ws_url],
                    cookie=cast.cookies[name],
                    rng=random.Random(master.random()),
                    lifetime=(0.2, 1.2),
                )
                for name in NAMES
            ]
            tasks = await start_clients(clients)
            try:
                tally = {"committed": 0, "rolled back": 0}
                errors: list[str] = []
                until = time.monotonic() + 5
                writers = [
                    threading.Thread(
                        target=write_randomly,
                        args=(cast, random.Random(master.random()), until, tally, errors),
                    )
                    for _ in range(4)
                ]
                for thread in writers:
                    thread.start()
                for thread in writers:
                    await asyncio.to_thread(thread.join, 30)
                assert not any(t.is_alive() for t in writers), "a writer hung"
                assert not errors, errors
                await finish(cast, clients, tasks)
            finally:
                cancel(tasks)
    assert tally["committed"] >= 10 and tally["rolled back"] >= 1, tally
    for client in clients:
        assert len(client.visits) >= 3, f"{client.name} hardly reconnected"
    assert {v.url for c in clients for v in c.visits} == {s1.ws_url, s2.ws_url}
    try:
        await db(check)(cast, clients)
    except AssertionError as exc:
        raise AssertionError(f"FAULTS_SEED={seed}: {exc}") from None


# 5. A hub whose start fails ----------------------------------------------------------------------


class ProcessStuckAfterOutage(AssertionError):
    """The service is back, a fresh process accepts, but this one still refuses."""


async def accepts_after_recovery(server: ServerProcess, cookie: str, env: dict) -> None:
    """``server`` accepts now that the service is back; if not, tell a stuck process (a fresh
    one with the same settings accepts) from a service that is still down."""
    outcome = await handshake_outcome(server, cookie)
    if outcome.startswith("accepted"):
        return
    fresh = ServerProcess(**env)
    async with running(fresh):
        fresh_outcome = await handshake_outcome(fresh, cookie)
    assert fresh_outcome.startswith("accepted"), f"the service is not back: {fresh_outcome}"
    raise ProcessStuckAfterOutage(
        f"refused after recovery ({outcome}) while a fresh process accepts\n"
        + server.output()[-1500:]
    )


async def test_first_handshake_during_a_database_outage_then_recovery():
    """A server process whose first socket arrives while its database is down serves sockets
    once the database is back."""
    cast = await db(make_cast)()
    if connection.vendor == "postgresql":
        database = await asyncio.to_thread(ProxiedPostgres)
    else:
        database = VanishingSqlite()
    env = {"DATABASE_URL": database.url, **database.server_env}
    server = ServerProcess(**env)
    try:
        async with running(server):
            await asyncio.to_thread(database.cut)
            refused = await handshake_outcome(server, cast.cookies["alice"])
            assert refused.startswith(("http 403", "http 500")), refused
            await asyncio.to_thread(database.restore)
            await accepts_after_recovery(server, cast.cookies["alice"], env)
    finally:
        await asyncio.to_thread(database.close)


@pytest.mark.redis
async def test_first_handshake_during_a_redis_outage_then_recovery():
    """A server process whose first socket arrives while Redis is down accepts it (the hub
    starts from the database, and its poll delivers meanwhile), and joins its group once
    Redis is back, so that events then come through Redis."""
    need_redis()
    cast = await db(make_cast)()
    redis = RedisServer()  # not started yet: down
    env = {"REDIS_URL": redis.url, "NOTIFICATIONS_POLL_INTERVAL": "60"}
    server = ServerProcess(**env)
    try:
        async with running(server):
            outcome = await handshake_outcome(server, cast.cookies["alice"])
            assert outcome.startswith("accepted"), outcome
            await asyncio.to_thread(redis.start)
            await asyncio.to_thread(wait_for_group, redis, 1, "the hub joins its group", 10)
            async with (
                redis_in_test_process(redis.url),
                ws_connect(
                    server.ws_url,
                    origin=server.origin,
                    additional_headers={"Cookie": cast.cookies["alice"]},
                ) as ws,
            ):
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
                event = await db(notify)("everyone", "through Redis again")
                # The poll is 60 s: arriving within 5 s means it came through Redis.
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert frame["id"] == event.id
    finally:
        redis.__exit__()
