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

Every process runs on the same machine, so wall clocks (``time.time()``) are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not at bind()

# Compact JSON (the project, bare) or json.dumps defaults with spaces (stock Channels).
ID_RE = re.compile(rb'"id": ?(\d+)')
T_RE = re.compile(rb'"t": ?([0-9.eE+-]+)')
NOTIFICATION = b'"notification"'


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

    def report(self, event_id: int, now: float) -> None:
        self.reported.add(event_id)
        _out({"ev": "done", "id": event_id, "first": self.first[event_id], "last": now})

    def recheck(self) -> None:
        """After a socket closed: ids every remaining socket has are complete now."""
        for event_id, count in self.counts.items():
            if event_id not in self.reported and count >= self.open:
                self.report(event_id, self.last[event_id])


class WSClient(asyncio.Protocol):
    __slots__ = ("buf", "frag", "handshake_done", "key", "ready", "request", "stats", "transport")

    def __init__(self, stats: Stats, request: bytes, ready: asyncio.Future) -> None:
        self.stats = stats
        self.request = request
        self.ready = ready
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
        elif self.handshake_done:
            self.stats.open -= 1
            self.stats.closed_after_hello += 1
            if not self.stats.closing:
                self.stats.recheck()

    def data_received(self, data: bytes) -> None:
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
                self.ready.set_result(None)
                continue
            if NOTIFICATION not in payload:
                stats.other_frames += 1
                continue
            m = ID_RE.search(payload)
            t = T_RE.search(payload)
            if m is None:
                stats.other_frames += 1
                continue
            event_id = int(m.group(1))
            stats.records.append((event_id, now, t.group(1) if t else b"0"))
            count = stats.counts.get(event_id, 0) + 1
            stats.counts[event_id] = count
            if count == 1:
                stats.first[event_id] = now
            stats.last[event_id] = now
            if count == stats.open:
                stats.report(event_id, now)
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

    async def _open_one(self, index: int) -> WSClient | None:
        loop = asyncio.get_running_loop()
        url = urlsplit(self.urls[index % len(self.urls)])
        host, port = url.hostname or "127.0.0.1", url.port or 80
        path = url.path + (f"?{url.query}" if url.query else "")
        cookie = self.cookies[index % len(self.cookies)] if self.cookies else None
        for attempt in range(self.args.attempts):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            proto: WSClient | None = None
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.sources:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((self.sources[index % len(self.sources)], 0))
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
                ready = loop.create_future()
                request = _request(host, port, path, cookie)
                _, proto = await loop.create_connection(
                    lambda r=request, f=ready: WSClient(self.stats, r, f), sock=sock
                )
                await asyncio.wait_for(ready, self.args.handshake_timeout)
                return proto
            except (TimeoutError, OSError, ConnectionError) as exc:
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()
                else:
                    sock.close()
                name = type(exc).__name__ + (f": {exc}" if isinstance(exc, ConnectionError) else "")
                self.errors[name[:120]] = self.errors.get(name[:120], 0) + 1
                if attempt + 1 < self.args.attempts:
                    self.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
        self.failures += 1
        return None

    async def connect(self) -> None:
        start = time.time()
        sem = asyncio.Semaphore(self.args.concurrency)

        async def one(i: int) -> None:
            async with sem:
                proto = await self._open_one(i)
            if proto is not None:
                self.clients.append(proto)

        await asyncio.gather(*(one(i) for i in range(self.args.n)))
        _out(
            {
                "ev": "ready",
                "n": self.args.n,
                "open": self.stats.open,
                "start": start,
                "end": time.time(),
                "failures": self.failures,
                "retries": self.retries,
                "errors": self.errors,
            }
        )

    def dump(self) -> None:
        per_id: dict[str, dict] = {}
        lat: dict[int, list[int]] = {}
        for event_id, recv, t in self.stats.records:
            lat.setdefault(event_id, []).append(int((recv - float(t)) * 1e6))
        for event_id, values in lat.items():
            per_id[str(event_id)] = {
                "count": self.stats.counts[event_id],
                "first": self.stats.first[event_id],
                "last": self.stats.last[event_id],
                "lat_us": values,
            }
        cpu = os.times()
        _out(
            {
                "ev": "stats",
                "open": self.stats.open,
                "closed_after_hello": self.stats.closed_after_hello,
                "other_frames": self.stats.other_frames,
                "cpu_s": cpu.user + cpu.system,
                "per_id": per_id,
            }
        )

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        _out({"ev": "started", "pid": os.getpid()})
        connecting: asyncio.Task | None = None
        while True:
            line = await reader.readline()
            command = line.decode().strip()
            if command == "connect" and connecting is None:
                connecting = asyncio.ensure_future(self.connect())
            elif command == "dump":
                self.dump()
            elif command == "quit" or not line:
                break
        if connecting is not None and not connecting.done():
            connecting.cancel()
        self.stats.closing = True
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", required=True, help="ws://127.x.x.x:P/path")
    parser.add_argument("-n", type=int, required=True, help="sockets to open")
    parser.add_argument("--source", default="", help="comma separated local addresses to bind")
    parser.add_argument("--cookies", default="", help="file: one Cookie header value a line")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
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
            await asyncio.wait_for(Worker(args).main(), args.max_seconds)
        except TimeoutError:
            print("client worker: --max-seconds reached, exiting", file=sys.stderr)

    asyncio.run(bounded())


if __name__ == "__main__":
    main()
