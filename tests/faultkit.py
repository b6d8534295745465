"""Fault-injection kit (tests/test_faults.py, bench/soak.py): a private Redis, a TCP proxy that
can cut a database off, and a WebSocket client that resumes from the highest id it received.

Everything listens on and connects to 127.0.0.1 only. Nothing here touches the shared Redis
(6379) or PostgreSQL (5432) services: the private Redis is a child process on a free port, and
the proxy only forwards to PostgreSQL while it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, *, timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll a process-level condition (a port, a log line, a key in Redis) with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what or condition}")
        time.sleep(interval)


async def async_wait_until(condition, *, timeout: float, interval: float = 0.05, what: str = ""):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what or condition}")
        await asyncio.sleep(interval)


# A private Redis ---------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port of 127.0.0.1, without persistence: a restart empties it,
    as a crashed or failed-over Redis would come back (groups and queued messages gone)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="fault-redis-")
        self.log = Path(self.dir) / "redis.log"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        command += ["--dir", self.dir, "--logfile", str(self.log)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=timeout, what=f"redis-server on port {self.port}")
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (redis saves nothing here) and wait until it has exited."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def command(self, *args: str) -> Any:
        """One command over RESP; returns the decoded reply (simple types only)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"".join(parts))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        kind, body = reply[:1], reply[1:].strip().decode()
        if kind == b":":
            return int(body)
        if kind == b"-":
            raise RuntimeError(body)
        return body

    def ping(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def group_size(self, group: str, prefix: str = "asgi") -> int:
        """Members of a channels_redis group (the hubs of the running server processes):
        subscribers of the group's channel with the pub/sub layer, the group's sorted set
        with the core layer (REDIS_LAYER, as project/settings.py reads it)."""
        if redis_layer() == "pubsub":
            # An array reply [channel, count]: its last line is the count, as ":N".
            reply = self.command("PUBSUB", "NUMSUB", f"{prefix}__group__{group}")
            return int(reply.split()[-1].lstrip(":"))
        return self.command("ZCARD", f"{prefix}:group:{group}")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_layer() -> str:
    return os.environ.get("REDIS_LAYER", "pubsub")


def redis_layers(url: str) -> dict[str, Any]:
    """``CHANNEL_LAYERS`` for the test process, as project/settings.py builds it from REDIS_URL
    and REDIS_LAYER."""
    if redis_layer() == "pubsub":
        return {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [url]},
            }
        }
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [url], "capacity": 10_000, "expiry": 30},
        }
    }


# A TCP proxy that can cut a database off ----------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, in its own thread and event loop (so that
    blocking calls in the test do not stall it).

    ``cut()`` closes the listening socket (new connections are refused at once, as when a
    database host is down) and resets every open connection; ``restore()`` listens again on
    the same port.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        assert target[0].startswith("127.") or target[0] == "localhost", "loopback only"
        self.target = target
        self.port = port or free_port()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # RST: the peer sees the connection reset at once
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= pair
            for w in pair:
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# A client that resumes ----------------------------------------------------------------------------


@dataclass
class Visit:
    """One connection of a :class:`ResumingClient`: what it asked for and what it got."""

    url: str
    cursor: int | None
    frames: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    end: str = ""

    @property
    def hello(self) -> dict[str, Any] | None:
        return self.frames[0] if self.frames and self.frames[0]["type"] == "hello" else None


class ResumingClient:
    """A protocol client that keeps the highest notification id it received and, whenever its
    socket ends (server killed, restarted, or its own random churn), connects again with
    ``?cursor=<that id>``: to the next URL of ``urls`` when a connection fails (fail-over), or
    to a random one when ``rng`` is given.

    ``run()`` returns once it has received ``sentinel`` (set it after the last notification).
    Every connection is kept as a :class:`Visit` for :meth:`problems`.
    """

    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        cookie: str | None = None,
        cursor: int | None = 0,
        rng: random.Random | None = None,
        lifetime: tuple[float, float] | None = None,
        reconnect_delay: float = 0.05,
        ssl: Any = None,
    ) -> None:
        self.name = name
        self.ssl = ssl  # an ssl.SSLContext for wss:// URLs with a private certificate
        self.urls = urls
        self.cookie = cookie
        self.cursor = cursor
        self.rng = rng
        self.lifetime = lifetime
        self.churn = lifetime is not None
        self.reconnect_delay = reconnect_delay
        self.index = 0
        self.visits: list[Visit] = []
        self.failed_attempts: list[str] = []
        self.sentinel: int | None = None
        self.connected = asyncio.Event()
        self._ws = None
        self._drop = False
        self._pong: asyncio.Future | None = None
        self._closing: asyncio.Future | None = None

    # What it received ----------------------------------------------------------------------

    @property
    def received(self) -> list[int]:
        return [event_id for visit in self.visits for event_id in visit.ids]

    @property
    def done(self) -> bool:
        sentinel, cursor = self.sentinel, self.cursor
        return sentinel is not None and cursor is not None and cursor >= sentinel

    def problems(self, expected: set[int]) -> list[str]:
        """Everything that breaks the delivery guarantees (PROTOCOL.md) for this client."""
        found = []
        received = self.received
        counts: dict[int, int] = {}
        for event_id in received:
            counts[event_id] = counts.get(event_id, 0) + 1
        twice = sorted(i for i, n in counts.items() if n > 1)
        missing = sorted(expected - set(counts))
        extra = sorted(set(counts) - expected)
        if missing:
            found.append(f"{self.name}: missed {missing}")
        if twice:
            found.append(f"{self.name}: received twice {twice}")
        if extra:
            found.append(f"{self.name}: received ids outside its audience {extra}")
        for n, visit in enumerate(self.visits):
            where = f"{self.name} connection {n} ({visit.url}, cursor={visit.cursor})"
            if any(b <= a for a, b in zip(visit.ids, visit.ids[1:], strict=False)):
                found.append(f"{where}: ids not strictly increasing: {visit.ids}")
            if not visit.frames:
                continue
            if visit.frames[0]["type"] != "hello":
                found.append(f"{where}: first frame is not hello: {visit.frames[0]}")
            kinds = [f["type"] for f in visit.frames]
            if visit.cursor is not None and "replayed" in kinds:
                cut = kinds.index("replayed")
                before = [f for f in visit.frames[:cut] if f["type"] == "notification"]
                after = [f for f in visit.frames[cut:] if f["type"] == "notification"]
                if any(not f["replay"] for f in before) or any(f["replay"] for f in after):
                    found.append(f"{where}: live frame inside the replay")
                if not visit.frames[cut]["complete"]:
                    found.append(f"{where}: incomplete replay {visit.frames[cut]}")
                if visit.cursor is not None and any(f["id"] <= visit.cursor for f in before):
                    found.append(f"{where}: replayed an id at or below its cursor")
        return found

    # Running ---------------------------------------------------------------------------------

    def drop(self, *, switch: bool = False) -> None:
        """Close the current socket from the client side; it reconnects with its cursor (to
        the next URL with ``switch``)."""
        self._drop = True
        if switch:
            self.index += 1
        if self._ws is not None:
            self._closing = asyncio.ensure_future(self._ws.close())

    async def ping(self, timeout: float = 3) -> dict[str, Any]:
        """Send ``ping`` on the open socket and return the ``pong`` (run() reads it)."""
        assert self._ws is not None, "not connected"
        self._pong = asyncio.get_running_loop().create_future()
        await self._ws.send(json.dumps({"type": "ping", "ref": "fault-ping"}))
        return await asyncio.wait_for(self._pong, timeout)

    async def run(self) -> None:
        while not self.done:
            url = self._pick()
            try:
                await self._visit(url)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.failed_attempts.append(f"{url}: {type(exc).__name__}: {exc}")
                self.index += 1  # fail over to the next server
            self.connected.clear()
            if not self.done:
                await asyncio.sleep(self.reconnect_delay)  # back-off, not a wait for a condition

    def _pick(self) -> str:
        if self.rng is not None:
            return self.rng.choice(self.urls)
        return self.urls[self.index % len(self.urls)]

    async def _visit(self, url: str) -> None:
        parts = urlsplit(url)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        cursor = self.cursor
        target = url if cursor is None else f"{url}?cursor={cursor}"
        scheme = "https" if parts.scheme == "wss" else "http"
        extra = {"ssl": self.ssl} if self.ssl is not None else {}
        async with ws_connect(
            target,
            origin=f"{scheme}://{parts.netloc}",
            additional_headers=headers,
            **extra,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
        ) as ws:
            visit = Visit(url=url, cursor=cursor)
            self.visits.append(visit)
            self._ws, self._drop = ws, False
            until = None
            if self.churn and self.lifetime and self.rng is not None:
                until = time.monotonic() + self.rng.uniform(*self.lifetime)
            try:
                while not self.done and not self._drop:
                    wait = 5.0
                    if until is not None and self.churn:
                        wait = until - time.monotonic()
                        if wait <= 0:
                            visit.end = "churn"
                            break
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=min(wait, 5.0))
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "pong" and self._pong is not None and not self._pong.done():
                        self._pong.set_result(frame)
                        continue
                    visit.frames.append(frame)
                    if kind == "hello":
                        if self.cursor is None:
                            self.cursor = frame["cursor"]
                        self.connected.set()
                    elif kind == "notification":
                        visit.ids.append(frame["id"])
                        self.cursor = max(self.cursor or 0, frame["id"])
            except ConnectionClosed as exc:
                visit.end = f"closed by server: {exc}"
            finally:
                self._ws = None
            if self._drop:
                visit.end = "dropped by the test"


def expected_ids(audiences: dict[int, frozenset[str]], committed: set[int]) -> dict[str, set[int]]:
    """Per user name, the committed ids whose audience (as the sender recorded it) covers them."""
    per_user: dict[str, set[int]] = {}
    for event_id, names in audiences.items():
        if event_id in committed:
            for name in names:
                per_user.setdefault(name, set()).add(event_id)
    return per_user
