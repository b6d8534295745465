"""Soak: the real server under steady notifications and client churn, for minutes.

    .venv/bin/python -m bench.soak --minutes 10 [--rate 20] [--clients 40] [--out FILE]
        [--server uvicorn-sansio|daphne] [--server-env KEY=VALUE ...]

Starts the production server as the Dockerfile runs it (``--server uvicorn-sansio``, the
default: ``uvicorn project.asgi:application --ws websockets-sansio --loop uvloop`` with the
project's httptools protocol and its request-head deadline) or ``daphne
project.asgi:application`` (``--server daphne``), with production settings from the environment
(``DJANGO_DEBUG=0``, a secret key, ``REDIS_URL``, persistent database connections; see
docs/deployment.md). ``--server-env`` adds a variable to the server's environment only: an
allocator setting, or ``PYTHONPATH`` to a folder whose ``sitecustomize.py`` instruments the
server. (With glibc's default malloc, daphne's RSS creeps: asyncio's selector transport, which
carries the Redis connections under daphne, receives into a 256 KiB buffer and shrinks it to
the message, and once glibc has raised its dynamic mmap threshold those buffers are cut from
the heap and fragment it; ``--server-env MALLOC_MMAP_THRESHOLD_=131072`` keeps them out of the
heap. uvloop, under uvicorn, reads into one reused buffer.) The database is a fresh SQLite file
in a temporary folder (``--database-url`` for PostgreSQL) and a private ``redis-server`` on a
free port of 127.0.0.1 (``--redis-url`` to use another one). This process is the application:
it calls ``notify()`` ``--rate`` times a second with mixed audiences (one user, two users, a
group, a topic, everyone), publishing through Redis as a web worker would.

``--clients`` WebSocket clients, signed in as ``--users`` users, each stay connected for a
random 5-60 s, go away for up to 3 s, and reconnect with ``?cursor=`` the highest id they
received (the protocol's resume). Every ``--sample-every`` seconds the server's RSS, open file
descriptors, CPU time and the client counts are sampled and printed.

At the end the emitter stops, a last notification to everyone is sent, and every client must
receive it; then what each client received is compared with the database (the committed ids
its user's audience covers): losses, duplicates, ids out of order on one connection, and
incomplete replays are counted. The summary (JSON) is printed and written to ``--out``
(default ``bench/results/soak-latest.json``). RSS and fds are also read with the server idle
(warmed up, no client) before the clients connect and after they have all left. Exit status 0
when nothing was lost or duplicated, the server stayed up and the idle fd count afterwards is
within ``--fd-slack`` of the one before; 1 otherwise. Only 127.0.0.1 is used, and every wait
is bounded: the run stops by itself after ``--minutes`` plus at most two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ROOT = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# The server's resources, from /proc ---------------------------------------------------------


def proc_sample(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/statm") as f:
        rss_pages = int(f.read().split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mib": round(rss_pages * PAGE / 2**20, 2), "fds": fds, "cpu_s": round(cpu, 2)}


# Clients ------------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.connects = 0
        self.failed_connects = 0
        self.order_violations = 0
        self.incomplete_replays = 0
        self.received = 0


class SoakClient:
    """Resumes from the highest id it received; keeps ids only (a long run has many)."""

    def __init__(self, name: str, url: str, cookie: str, rng: random.Random, stats: Stats):
        self.name = name
        self.url = url
        self.cookie = cookie
        self.rng = rng
        self.stats = stats
        self.cursor = 0  # from the start: every event the user may see
        self.ids: list[int] = []
        self.churn = True
        self.sentinel: int | None = None
        self.online = False

    @property
    def done(self) -> bool:
        return self.sentinel is not None and self.cursor >= self.sentinel

    async def run(self) -> None:
        origin = "http://" + self.url.split("/")[2]
        while not self.done:
            try:
                async with ws_connect(
                    f"{self.url}?cursor={self.cursor}",
                    origin=origin,
                    additional_headers={"Cookie": self.cookie},
                    open_timeout=10,
                    close_timeout=2,
                    ping_interval=None,
                    max_queue=None,
                ) as ws:
                    self.stats.connects += 1
                    self.online = True
                    await self._read(ws)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                self.stats.failed_connects += 1
            finally:
                self.online = False
            if not self.done:
                # Offline for a while (short enough that one replay covers what it missed).
                await asyncio.sleep(self.rng.uniform(0.05, 3.0) if self.churn else 0.05)

    async def _read(self, ws) -> None:
        until = time.monotonic() + self.rng.uniform(5, 60)
        last = 0
        while not self.done:
            wait = until - time.monotonic() if self.churn else 5.0
            if wait <= 0:
                return
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=min(wait, 5.0))
            except TimeoutError:
                continue
            if '"notification"' in raw[:30]:
                frame = json.loads(raw)
                event_id = frame["id"]
                if event_id <= last:
                    self.stats.order_violations += 1
                last = event_id
                self.ids.append(event_id)
                self.cursor = max(self.cursor, event_id)
                self.stats.received += 1
            elif '"replayed"' in raw[:30] and not json.loads(raw)["complete"]:
                self.stats.incomplete_replays += 1


async def settled_fds(pid: int, sample, label: str, timeout: float = 15) -> dict[str, Any]:
    """Sample once the server's fd count has stopped falling (closes take a moment)."""
    deadline = time.monotonic() + timeout
    previous = proc_sample(pid)["fds"]
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = proc_sample(pid)["fds"]
        if now >= previous:
            break
        previous = now
    return sample(label)


# The run ------------------------------------------------------------------------------------------

# ``python -m`` arguments of each server, before the address. uvicorn-sansio is the Dockerfile's
# production command (its --ws-max-size, without the proxy and backlog options).
SERVERS: dict[str, list[str]] = {
    "daphne": ["daphne"],
    "uvicorn-sansio": [
        "uvicorn", "--ws", "websockets-sansio", "--ws-per-message-deflate", "false",
        "--ws-max-size", "1048576",
        "--http", "notifications.realtime.uvicorn_http:HttpToolsProtocol",
        "--loop", "uvloop", "--log-level", "warning",
    ],
}  # fmt: skip


def listen(server: str, port: int) -> list[str]:
    if server == "daphne":
        return ["-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
    return ["--host", "127.0.0.1", "--port", str(port), "project.asgi:application"]


def production_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "REDIS_URL", "DATABASE_URL", "NOTIFICATIONS_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "soak-"
            + "s3cr3t-0123456789-abcdefghijklmnopqrstuvwxyz-not-for-prod",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            "NOTIFICATIONS_LOG_LEVEL": "WARNING",
        }
    )
    return env


def setup_django(env: dict[str, str]) -> None:
    """This process is the application: same settings as the server, migrated database."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def make_cast(n_users: int) -> dict[str, Any]:
    """Users (with sessions), a group of half of them, a topic followed by a third."""
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore

    from notifications.models import Subscription, Topic

    users, cookies = [], {}
    for i in range(n_users):
        user = get_user_model().objects.create_user(f"soak{i}", password=None)
        users.append(user)
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        cookies[user.username] = f"{settings.SESSION_COOKIE_NAME}={store.session_key}"
    group = Group.objects.create(name="soak-group")
    group.user_set.add(*users[::2])
    topic = Topic.objects.create(name="Soak", slug="soak-topic")
    for user in users[::3]:
        Subscription.objects.create(user=user, topic=topic)
    names = [u.username for u in users]
    audiences = {
        "everyone": ("everyone", frozenset(names)),
        "group": (group, frozenset(names[::2])),
        "topic": (topic, frozenset(names[::3])),
    }
    return {"users": users, "cookies": cookies, "audiences": audiences, "names": names}


def pick_audience(cast: dict[str, Any], rng: random.Random) -> tuple[Any, frozenset[str]]:
    roll = rng.random()
    users = cast["users"]
    if roll < 0.4:
        user = rng.choice(users)
        return user, frozenset({user.username})
    if roll < 0.55:
        pair = rng.sample(users, 2)
        return pair, frozenset(u.username for u in pair)
    if roll < 0.75:
        return cast["audiences"]["group"]
    if roll < 0.85:
        return cast["audiences"]["topic"]
    return cast["audiences"]["everyone"]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from notifications import notify
    from notifications.models import Event

    rng = random.Random(args.seed)
    cast = await sync_to_async(make_cast)(args.users)
    sent: dict[int, frozenset[str]] = {}
    samples: list[dict[str, Any]] = []
    start = time.monotonic()

    def send(label_rng: random.Random, title: str, audience=None) -> int:
        recipients, names = audience or pick_audience(cast, label_rng)
        event_id = notify(recipients, title, data={"t": time.time()}).id
        sent[event_id] = names
        return event_id

    asend = sync_to_async(send)  # one thread: publishes on this loop's Redis connection
    stats = Stats()
    clients = [
        SoakClient(
            name := cast["names"][i % len(cast["names"])],
            args.url,
            cast["cookies"][name],
            random.Random(rng.random()),
            stats,
        )
        for i in range(args.clients)
    ]

    def sample(label: str = "") -> dict[str, Any]:
        row = {"t": round(time.monotonic() - start, 1), **proc_sample(args.server_pid)}
        if label:
            row["label"] = label
        row.update(
            clients_online=sum(c.online for c in clients),
            sent=len(sent),
            received=stats.received,
            connects=stats.connects,
        )
        samples.append(row)
        log(
            f"rss={row['rss_mib']} MiB fds={row['fds']} cpu={row['cpu_s']}s "
            f"online={row['clients_online']} sent={row['sent']} received={row['received']} "
            f"connects={row['connects']}"
        )
        return row

    # The server warmed up (hub started, connections pooled) and idle: the baseline.
    warmup = SoakClient(cast["names"][0], args.url, cast["cookies"][cast["names"][0]], rng, Stats())
    warmup.churn = False
    warmup.sentinel = await asend(rng, "soak: warm-up", cast["audiences"]["everyone"])
    await asyncio.wait_for(warmup.run(), 30)
    idle_before = await settled_fds(args.server_pid, sample, "idle before")

    tasks = [asyncio.ensure_future(c.run()) for c in clients]
    deadline = time.monotonic() + 30
    while sum(c.online for c in clients) < len(clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # process-level condition with a deadline
    log(f"{sum(c.online for c in clients)}/{len(clients)} clients connected")

    start = time.monotonic()
    samples.clear()
    end = start + args.minutes * 60
    next_sample = start
    period = 1 / args.rate
    n = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            sample()
            next_sample += args.sample_every
        if args.server_proc.poll() is not None:
            raise RuntimeError(f"the server exited with {args.server_proc.returncode}")
        await asend(rng, f"soak #{n}")
        n += 1
        delay = start + n * period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the emitter's pace
    sample()

    # Drain: no more churn; a last event to everyone; every client must get it.
    for client in clients:
        client.churn = False
    sentinel = await asend(rng, "soak: last", cast["audiences"]["everyone"])
    for client in clients:
        client.sentinel = sentinel
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
        drained = True
    except TimeoutError:
        drained = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    final = samples[-1]
    idle_after = await settled_fds(args.server_pid, sample, "idle after")

    committed = set(await sync_to_async(lambda: list(Event.objects.values_list("id", flat=True)))())
    losses = duplicates = expected_total = 0
    lost_examples: list[str] = []
    for client in clients:
        expected = {i for i, names in sent.items() if client.name in names and i in committed}
        got = set(client.ids)
        expected_total += len(expected)
        missing = expected - got
        losses += len(missing)
        duplicates += len(client.ids) - len(got)
        if missing and len(lost_examples) < 10:
            lost_examples.append(f"{client.name}: {sorted(missing)[:10]}")
    loaded = [s for s in samples if "label" not in s]
    first = loaded[0]
    warm = next((s for s in loaded if s["t"] >= 60), first)
    rss = [s["rss_mib"] for s in loaded]
    fds = [s["fds"] for s in loaded]
    return {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "clients": args.clients,
        "users": args.users,
        "server": f"{args.server}, DJANGO_DEBUG=0, REDIS_URL, persistent DB connections",
        "server_env": args.server_env,
        "database": args.database_kind,
        "notifications_sent": len(sent),
        "notifications_committed": len(committed),
        "deliveries_expected": expected_total,
        "deliveries_received": stats.received,
        "losses": losses,
        "lost_examples": lost_examples,
        "duplicates": duplicates,
        "order_violations": stats.order_violations,
        "incomplete_replays": stats.incomplete_replays,
        "connections_opened": stats.connects,
        "failed_connects": stats.failed_connects,
        "drained": drained,
        "rss_mib": {
            "idle_before": idle_before["rss_mib"],
            "start": first["rss_mib"],
            "after_1_min": warm["rss_mib"],
            "end": final["rss_mib"],
            "max": max(rss),
            "idle_after": idle_after["rss_mib"],
            "growth_after_1_min": round(final["rss_mib"] - warm["rss_mib"], 2),
        },
        "fds": {
            "idle_before": idle_before["fds"],
            "start": first["fds"],
            "end": final["fds"],
            "max": max(fds),
            "idle_after": idle_after["fds"],
        },
        "server_cpu_s": final["cpu_s"],
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20, help="notifications per second")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fd-slack", type=int, default=8)
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp folder")
    parser.add_argument("--redis-url", help="default: a private redis-server on a free port")
    parser.add_argument("--server", choices=sorted(SERVERS), default="uvicorn-sansio")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server only (repeatable)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak-latest.json"))
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes KEY=VALUE")

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    children: list[subprocess.Popen] = []
    try:
        redis_url = args.redis_url
        if not redis_url:
            if not shutil.which("redis-server"):
                parser.error("redis-server is not on PATH: install it or pass --redis-url")
            rport = free_port()
            redis = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            children.append(redis)
            wait_port(rport, 10, redis)
            redis_url = f"redis://127.0.0.1:{rport}/0"
        database_url = args.database_url or f"sqlite:///{workdir / 'soak.sqlite3'}"
        args.database_kind = database_url.split(":", 1)[0]
        env = production_env(database_url, redis_url)
        setup_django(env)
        port = free_port()
        server_log = workdir / "server.log"
        server_env = {**env, **dict(item.split("=", 1) for item in args.server_env)}
        with open(server_log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", *SERVERS[args.server], *listen(args.server, port)],
                cwd=ROOT,
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        children.append(server)
        wait_port(port, 30, server)
        args.url = f"ws://127.0.0.1:{port}/ws/notifications/"
        args.server_pid, args.server_proc = server.pid, server
        log(f"server pid {server.pid} on {args.url}; redis {redis_url}; {args.database_kind}")

        summary = asyncio.run(asyncio.wait_for(soak(args), args.minutes * 60 + 120))
        summary["server_alive"] = server.poll() is None
        tail = server_log.read_text(errors="replace").splitlines()
        summary["server_log_errors"] = sum("ERROR" in line or "Traceback" in line for line in tail)
        ok = (
            summary["losses"] == 0
            and summary["duplicates"] == 0
            and summary["order_violations"] == 0
            and summary["drained"]
            and summary["server_alive"]
            and summary["fds"]["idle_after"] <= summary["fds"]["idle_before"] + args.fd_slack
        )
        summary["ok"] = ok
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(summary, indent=2) + "\n")
        brief = {k: v for k, v in summary.items() if k != "samples"}
        print(json.dumps(brief, indent=2))
        log(f"summary written to {out_path}")
        return 0 if ok else 1
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
