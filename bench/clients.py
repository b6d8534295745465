"""A benchmark client worker: one process holding many WebSocket client sockets.

Run by ``bench.run`` (never by hand, though it works: ``python -m bench.clients --help``).
It speaks a deliberately minimal RFC 6455 client over raw asyncio protocols (uvloop when
installed) instead of the ``websockets`` client: a server frame is unmasked, so reading one is
a header parse, a ``time.time()`` per read and two regex searches. That keeps the client's own
cost per frame to a few microseconds, so that the server, not the client, sets the spread.

Control protocol with the parent, one JSON object per line:

- stdout ``{"ev": "started"}`` once the process is up.
- stdin ``connect``: open the sockets (at most ``--concurrency`` handshakes in flight), wait until
  every socket got its first frame (``hello``), then stdout ``{"ev": "ready", ...}`` with the ramp
  start and end wall times and the failures.
- While running, stdout ``{"ev": "done", "id": ID, "last": T, "first": T0}`` when every open
  socket of this process has received notification ``ID`` (``T``: wall time of the last one).
- stdin ``dump``: stdout ``{"ev": "stats", ...}`` with, per notification id, the count received,
  the first and last receive times and the latencies in microseconds (receive wall time minus
  the ``"t"`` wall time carried in the frame).
- stdin ``quit`` or end of input: close every socket and exit. The process also exits by itself
  after ``--max-seconds``.

Resume mode (``bench.restart``), off unless the parent asks for it before ``connect``:

- stdin ``resume {"base": 0.5, "cap": 15, "stable": 10, "timeout": 15}``: every socket becomes a
  ``Peer``, a browser tab as ``notifications.js`` keeps one: when its socket closes it reconnects
  after a full-jitter backoff (a random delay in ``[0, min(cap, base * 2**attempt)]`` s, the
  attempt count reset once a connection has stayed up ``stable`` s; ``timeout`` s from dial to
  ``hello``), with ``?cursor=`` the highest id it received (``hello.cursor`` when it sent none),
  and it records every notification id it receives, in order, over all its connections.
  With ``"failover": true`` (``bench.failover``) each reconnect attempt dials the next of the
  ``--url`` servers instead of the socket's own.
- stdin ``progress``: stdout ``{"ev": "stats", "kind": "progress", ...}``: peers, open sockets,
  peers whose current socket got ``replayed``, dial attempts and failures so far.
- stdin ``peers``: stdout ``{"ev": "stats", "kind": "peers", "peers": [...]}``, per peer its ids
  and its connections (sent cursor, dial, ``hello`` and ``replayed`` times, replay count and
  completeness).
- stdin ``failures T``: stdout ``{"ev": "stats", "kind": "failures", ...}``: failed reconnect
  attempts dialled before and from wall time ``T`` on, by error.

Every process runs on the same machine, so wall clocks (``time.time()``) are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not at bind()

# Compact JSON (the project, bare) or json.dumps defaults with spaces (stock Channels).
ID_RE = re.compile(rb'"id": ?(\d+)')
T_RE = re.compile(rb'"t": ?([0-9.eE+-]+)')
NOTIFICATION = b'"notification"'
PUSH = b'"type":"push"'  # transient pushes (bench/emitters.PushEmitter) count like events
REPLAYED = b'"replayed"'


def _out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Stats:
    """What the process records; shared by all its sockets."""

    def __init__(self) -> None:
        self.open = 0  # sockets that got hello and are still open
        self.hello = 0
        self.closed_after_hello = 0
        self.counts: dict[int, int] = {}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        # (id, receive wall time, emit wall time bytes): parsed into latencies at dump time.
        self.records: list[tuple[int, float, bytes]] = []
        self.other_frames = 0
        self.reported: set[int] = set()
        self.closing = False
        # Socket bytes read (handshake included) and the bytes of the notification frames
        # (frame header + payload): the long-poll comparison's bytes per delivery.
        self.rx_bytes = 0
        self.notification_bytes = 0

    def received(self, event_id: int, now: float, emitted: bytes) -> None:
        """One client got notification ``event_id`` at ``now`` (``emitted``: its emit wall
        time, as sent); the parent hears ``done`` when every open client has it."""
        self.records.append((event_id, now, emitted))
        count = self.counts.get(event_id, 0) + 1
        self.counts[event_id] = count
        if count == 1:
            self.first[event_id] = now
        self.last[event_id] = now
        if count == self.open:
            self.report(event_id, now)

    def report(self, event_id: int, now: float) -> None:
        self.reported.add(event_id)
        _out({"ev": "done", "id": event_id, "first": self.first[event_id], "last": now})

    def recheck(self) -> None:
        """After a socket closed: ids every remaining socket has are complete now."""
        for event_id, count in self.counts.items():
            if event_id not in self.reported and count >= self.open:
                self.report(event_id, self.last[event_id])


class Peer:
    """Resume mode: one browser tab (``notifications.js``) whose socket comes and goes.

    It keeps the cursor the way the JS client does (the highest id received; ``hello.cursor``
    when the socket sent no cursor; after ``replayed`` at least that) and records every
    notification id received, duplicates included, over all its connections."""

    __slots__ = ("attempt", "conn", "conn_last", "connect_t", "conns", "cursor", "dial_t",
                 "dials", "hello_cursor", "ids", "index", "lost", "order_errors", "proto",
                 "resumed", "sent_cursor", "stable", "worker")  # fmt: skip

    def __init__(self, index: int, worker: Worker) -> None:
        self.index = index
        self.worker = worker
        self.ids: list[int] = []
        self.cursor: int | None = None  # what the next socket sends (None: no cursor)
        self.sent_cursor: int | None = None
        self.hello_cursor = 0
        self.attempt = 0  # backoff exponent
        self.dials = 0
        self.dial_t = 0.0
        self.connect_t = 0.0
        # [sent cursor, dial, hello, replayed (wall times), replayed count, complete,
        #  TCP connected (wall time)]
        self.conns: list[list] = []
        self.conn: list | None = None
        self.conn_last = 0  # the last id on the current connection
        self.order_errors = 0  # an id not above the previous one on the same connection
        self.lost: list[float] = []  # when a socket that got hello closed
        self.proto: WSClient | None = None
        self.resumed = False  # the current socket got ``replayed``
        self.stable: asyncio.TimerHandle | None = None

    def on_hello(self, payload: bytes, now: float) -> None:
        try:
            self.hello_cursor = int(json.loads(payload).get("cursor") or 0)
        except (ValueError, AttributeError, TypeError):
            self.hello_cursor = 0
        if self.sent_cursor is None:
            self.cursor = max(self.cursor or 0, self.hello_cursor)
        self.conn = [self.sent_cursor, self.dial_t, now, None, None, None, self.connect_t]
        self.conns.append(self.conn)
        self.conn_last = 0

    def on_frame(self, payload: bytes, now: float) -> None:
        if REPLAYED not in payload or self.conn is None:
            return
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if frame.get("type") != "replayed":
            return
        self.conn[3:6] = [now, frame.get("count"), frame.get("complete")]
        self.cursor = max(self.cursor or 0, self.conn_last, self.hello_cursor)
        self.resumed = True
        self.worker.resumed += 1

    def on_notification(self, event_id: int) -> None:
        if event_id <= self.conn_last:
            self.order_errors += 1
        self.conn_last = event_id
        self.ids.append(event_id)
        self.cursor = max(self.cursor or 0, event_id)

    def dump(self) -> list:
        return [self.index, self.ids, self.conns, self.order_errors, self.dials, self.lost,
                self.proto is not None]  # fmt: skip


class WSClient(asyncio.Protocol):
    __slots__ = ("buf", "frag", "handshake_done", "key", "peer", "ready", "request", "stats",
                 "transport")  # fmt: skip

    def __init__(
        self, stats: Stats, request: bytes, ready: asyncio.Future, peer: Peer | None = None
    ) -> None:
        self.stats = stats
        self.request = request
        self.ready = ready
        self.peer = peer
        self.buf = b""
        self.frag: bytes | None = None
        self.handshake_done = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        elif self.handshake_done and not self.ready.cancelled() and not self.ready.exception():
            self.stats.open -= 1
            self.stats.closed_after_hello += 1
            if not self.stats.closing:
                self.stats.recheck()
            if self.peer is not None and self.peer.proto is self:
                self.peer.worker.lost(self.peer)

    def data_received(self, data: bytes) -> None:
        self.stats.rx_bytes += len(data)
        buf = self.buf + data if self.buf else data
        if not self.handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode("latin1")))
                self.transport.close()
                return
            self.handshake_done = True
            buf = buf[end + 4 :]
        now = time.time()
        pos, size = 0, len(buf)
        stats = self.stats
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if b1 & 0x80:
                head += 4  # a masked server frame (never expected); the mask is ignored
            if size - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                self._control(opcode, payload)
                continue
            if not b0 & 0x80:  # a fragment: keep it until the final one
                self.frag = (self.frag or b"") + payload
                continue
            if self.frag is not None:
                payload, self.frag = self.frag + payload, None
            if not self.ready.done():
                stats.hello += 1
                stats.open += 1
                if self.peer is not None:
                    self.peer.on_hello(payload, now)
                self.ready.set_result(None)
                continue
            if NOTIFICATION not in payload and not payload.startswith(b"{" + PUSH):
                stats.other_frames += 1
                if self.peer is not None:
                    self.peer.on_frame(payload, now)
                continue
            m = ID_RE.search(payload)
            t = T_RE.search(payload)
            if m is None:
                stats.other_frames += 1
                continue
            event_id = int(m.group(1))
            stats.notification_bytes += head + length
            if self.peer is not None:
                self.peer.on_notification(event_id)
            stats.received(event_id, now, t.group(1) if t else b"0")
        self.buf = buf[pos:] if pos < size else b""

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping: answer with a masked pong carrying the same payload
            self.transport.write(_masked(0xA, payload))
        elif opcode == 0x8:  # close: echo it and drop the connection
            self.transport.write(_masked(0x8, payload[:2]))
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked(0x8, struct.pack("!H", 1000)))
            self.transport.close()


def _error_name(exc: BaseException) -> str:
    name = type(exc).__name__ + (f": {exc}" if isinstance(exc, ConnectionError) else "")
    return name[:120]


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def _request(host: str, port: int, path: str, cookie: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.clients: list[WSClient] = []
        self.urls = args.url
        self.sources = [s for s in (args.source or "").split(",") if s]
        self.cookies: list[str] = []
        if args.cookies:
            with open(args.cookies) as f:
                self.cookies = [line.strip() for line in f if line.strip()]
        self.failures = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        # Resume mode (``resume`` command): options, peers, dial attempts and their failures.
        self.resume: dict | None = None
        self.peers: list[Peer] = []
        self.resumed = 0  # peers whose current socket got ``replayed``
        self.dials = 0
        self.dial_failures: list[tuple[float, str]] = []  # (dial wall time, error)
        self.tasks: set[asyncio.Task] = set()

    async def _dial(
        self,
        index: int,
        timeout: float,
        cursor: int | None = None,
        peer: Peer | None = None,
        overall: bool = False,
        url_index: int | None = None,
    ) -> WSClient:
        """One attempt: TCP connect (10 s), upgrade, first frame (``hello``) within ``timeout`` s
        of the connect; with ``overall``, all of it within ``timeout`` s of the dial, as
        ``notifications.js`` counts its ``connectTimeout``. Raises on failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        url = urlsplit(self.urls[(index if url_index is None else url_index) % len(self.urls)])
        host, port = url.hostname or "127.0.0.1", url.port or 80
        query = [url.query] if url.query else []
        if cursor is not None:
            query.append(f"cursor={cursor}")
        path = url.path + ("?" + "&".join(query) if query else "")
        cookie = self.cookies[index % len(self.cookies)] if self.cookies else None
        sock = await connected_socket(
            host, port, source(self.sources, index), timeout if overall else 10
        )
        proto: WSClient | None = None
        try:
            if overall:
                timeout = max(0.001, deadline - loop.time())
            if peer is not None:
                peer.connect_t = time.time()
            ready = loop.create_future()
            request = _request(host, port, path, cookie)
            _, proto = await loop.create_connection(
                lambda r=request, f=ready: WSClient(self.stats, r, f, peer), sock=sock
            )
            if peer is not None:
                peer.proto = proto  # before hello: a close right after it must be seen
            await asyncio.wait_for(ready, timeout)
            return proto
        except BaseException:
            if peer is not None and peer.proto is proto:
                peer.proto = None
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            else:
                sock.close()
            raise

    async def _open_one(self, index: int) -> WSClient | None:
        peer = None
        if self.resume is not None:
            peer = Peer(index, self)
            self.peers.append(peer)
        for attempt in range(self.args.attempts):
            try:
                if peer is not None:
                    peer.dials += 1
                    peer.dial_t = time.time()
                proto = await self._dial(index, self.args.handshake_timeout, peer=peer)
                if peer is not None:
                    self._greeted(peer)
                return proto
            except (TimeoutError, OSError, ConnectionError) as exc:
                name = _error_name(exc)
                self.errors[name] = self.errors.get(name, 0) + 1
                if attempt + 1 < self.args.attempts:
                    self.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
        self.failures += 1
        return None

    # Resume mode -------------------------------------------------------------------------------

    def _greeted(self, peer: Peer) -> None:
        """A peer's socket got ``hello``: the backoff starts over once it has stayed up."""
        assert self.resume is not None
        if peer.proto is None:  # it closed again before this coroutine resumed
            return

        def stable() -> None:
            peer.attempt = 0

        peer.stable = asyncio.get_running_loop().call_later(self.resume["stable"], stable)

    def lost(self, peer: Peer) -> None:
        """A peer's socket that got ``hello`` closed: reconnect, as the JS client does."""
        peer.proto = None
        peer.lost.append(time.time())
        if peer.resumed:
            peer.resumed = False
            self.resumed -= 1
        if peer.stable is not None:
            peer.stable.cancel()
            peer.stable = None
        if not self.stats.closing:
            task = asyncio.ensure_future(self._reconnect(peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _reconnect(self, peer: Peer) -> None:
        opts = self.resume
        assert opts is not None
        while not self.stats.closing:
            # notifications.js: full jitter, a random delay in [0, min(cap, base * 2^attempt)].
            ceiling = min(opts["cap"], opts["base"] * 2 ** min(peer.attempt, 30))
            peer.attempt += 1
            await asyncio.sleep(random.random() * ceiling)
            if self.stats.closing:
                return
            peer.sent_cursor = peer.cursor
            peer.dials += 1
            self.dials += 1
            peer.dial_t = time.time()
            try:
                await self._dial(
                    peer.index,
                    opts["timeout"],
                    cursor=peer.cursor,
                    peer=peer,
                    overall=True,
                    # failover: each attempt dials the next server (bench.failover), as a
                    # load balancer would send a reconnect to a process that is up.
                    url_index=peer.index + peer.dials if opts.get("failover") else None,
                )
            except (TimeoutError, OSError, ConnectionError) as exc:
                self.dial_failures.append((peer.dial_t, _error_name(exc)))
                continue
            self._greeted(peer)
            return

    async def connect(self) -> None:
        start = await open_all(self)
        self.peers.sort(key=lambda p: p.index)
        report_ready(self, start)

    def dump(self) -> None:
        dump_stats(
            self.stats,
            {
                "path": "websocket",
                "rx": self.stats.rx_bytes,
                "notification_frames": self.stats.notification_bytes,
            },
        )

    def progress(self) -> None:
        failed: dict[str, int] = {}
        for _, name in self.dial_failures:
            failed[name] = failed.get(name, 0) + 1
        _out(
            {
                "ev": "stats",
                "kind": "progress",
                "t": time.time(),
                "peers": len(self.peers),
                "open": self.stats.open,
                "resumed": self.resumed,
                # Peers that lost a socket, and those of them whose current one replayed.
                "lost": sum(1 for p in self.peers if p.lost),
                "lost_resumed": sum(1 for p in self.peers if p.lost and p.resumed),
                "dials": self.dials,
                "dial_failures": failed,
            }
        )

    def failures_around(self, t: float) -> None:
        """Failed reconnect attempts dialled before ``t`` and after it (with, per error, how
        many were dialled in each second from ``t`` on)."""
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        per_second: dict[str, dict[int, int]] = {}
        for when, name in self.dial_failures:
            if when < t:
                before[name] = before.get(name, 0) + 1
                continue
            after[name] = after.get(name, 0) + 1
            seconds = per_second.setdefault(name, {})
            seconds[int(when - t)] = seconds.get(int(when - t), 0) + 1
        _out(
            {
                "ev": "stats",
                "kind": "failures",
                "before": before,
                "after": after,
                "after_per_second": per_second,
            }
        )

    async def main(self) -> None:
        connecting: asyncio.Task | None = None
        async for command, rest in commands():
            if command == "connect" and connecting is None:
                connecting = asyncio.ensure_future(self.connect())
            elif command == "dump":
                self.dump()
            elif command == "resume" and connecting is None:
                self.resume = {"base": 0.5, "cap": 15.0, "stable": 10.0, "timeout": 15.0}
                self.resume.update(json.loads(rest or "{}"))
            elif command == "progress":
                self.progress()
            elif command == "peers":
                _out({"ev": "stats", "kind": "peers", "peers": [p.dump() for p in self.peers]})
            elif command == "failures":
                self.failures_around(float(rest))
        if connecting is not None and not connecting.done():
            connecting.cancel()
        self.stats.closing = True
        for task in list(self.tasks):
            task.cancel()
        for client in self.clients:
            client.close()
        for peer in self.peers:
            if peer.proto is not None:
                peer.proto.close()
        await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_arguments(parser, url="ws://127.x.x.x:P/path", n="sockets to open")
    parser.add_argument("--cookies", default="", help="file: one Cookie header value a line")
    run_worker(parser, Worker, "client worker", argv)


# Shared with bench/longpoll_clients.py --------------------------------------------------------


async def commands() -> AsyncIterator[tuple[str, str]]:
    """Say ``started``, then yield each (command, rest of the line) the parent writes on
    stdin, until ``quit`` or the end of stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _out({"ev": "started", "pid": os.getpid()})
    while line := await reader.readline():
        command, _, rest = line.decode().strip().partition(" ")
        if command == "quit":
            return
        yield command, rest


def source(sources: list[str], index: int) -> str | None:
    """The local address connection ``index`` binds to (round robin), or None."""
    return sources[index % len(sources)] if sources else None


async def connected_socket(host: str, port: int, bind: str | None, timeout: float) -> socket.socket:
    """A non-blocking TCP_NODELAY socket connected to ``host:port`` within ``timeout`` s,
    bound to ``bind`` first when given (the port is picked at connect: many sockets per
    address). Closed again if the connect fails."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((bind, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_all(worker: Any) -> float:
    """Open ``worker.args.n`` connections with ``worker._open_one``, ``--concurrency`` at a
    time, into ``worker.clients``; return the wall time it started."""
    start = time.time()
    sem = asyncio.Semaphore(worker.args.concurrency)

    async def one(i: int) -> None:
        async with sem:
            proto = await worker._open_one(i)
        if proto is not None:
            worker.clients.append(proto)

    await asyncio.gather(*(one(i) for i in range(worker.args.n)))
    return start


def report_ready(worker: Any, start: float) -> None:
    _out(
        {
            "ev": "ready",
            "n": worker.args.n,
            "open": worker.stats.open,
            "start": start,
            "end": time.time(),
            "failures": worker.failures,
            "retries": worker.retries,
            "errors": worker.errors,
        }
    )


def dump_stats(stats: Stats, byte_counts: dict[str, Any]) -> None:
    """The ``stats`` answer to ``dump``: per notification id, the count, first and last
    receive times and every latency; the process's CPU; ``byte_counts`` as ``bytes``."""
    per_id: dict[str, dict] = {}
    lat: dict[int, list[int]] = {}
    for event_id, recv, t in stats.records:
        lat.setdefault(event_id, []).append(int((recv - float(t)) * 1e6))
    for event_id, values in lat.items():
        per_id[str(event_id)] = {
            "count": stats.counts[event_id],
            "first": stats.first[event_id],
            "last": stats.last[event_id],
            "lat_us": values,
        }
    cpu = os.times()
    _out(
        {
            "ev": "stats",
            "open": stats.open,
            "closed_after_hello": stats.closed_after_hello,
            "other_frames": stats.other_frames,
            "cpu_s": cpu.user + cpu.system,
            "per_id": per_id,
            "bytes": byte_counts,
        }
    )


def add_worker_arguments(parser: argparse.ArgumentParser, *, url: str, n: str) -> None:
    parser.add_argument("--url", action="append", required=True, help=url)
    parser.add_argument("-n", type=int, required=True, help=n)
    parser.add_argument("--source", default="", help="comma separated local addresses to bind")
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)


def run_worker(
    parser: argparse.ArgumentParser, worker_class: Any, label: str, argv: list[str] | None
) -> None:
    """Parse the arguments (loopback URLs only), then run ``worker_class(args).main()`` on
    uvloop when installed, for at most ``--max-seconds``."""
    args = parser.parse_args(argv)
    for url in args.url:
        host = urlsplit(url).hostname or ""
        if not host.startswith("127."):
            parser.error("the benchmark only connects to the loopback range 127.0.0.0/8")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    async def bounded() -> None:
        try:
            await asyncio.wait_for(worker_class(args).main(), args.max_seconds)
        except TimeoutError:
            print(f"{label}: --max-seconds reached, exiting", file=sys.stderr)

    asyncio.run(bounded())


if __name__ == "__main__":
    main()
