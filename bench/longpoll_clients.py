"""A benchmark client worker for the long-poll baseline: one process holding many HTTP/1.1
keep-alive connections, each with one long-poll request outstanding at all times.

Run by ``bench.run`` for the ``ours-longpoll`` kind, in place of ``bench/clients.py``, and
speaks the same line protocol with the parent (``started``, ``connect`` -> ``ready``, ``done``
per notification id, ``dump`` -> ``stats``, ``quit``). Each client:

1. connects (TCP_NODELAY; source addresses as ``bench/clients.py``) and sends
   ``GET /longpoll/``, whose answer is the newest visible id (a freshly loaded page's cursor):
   that is this client's ``hello``, and the process reports ``ready`` when every client got it;
2. then, on the same connection, ``GET /longpoll/?after=CURSOR``, and again at once after
   every answer with the cursor it returned, so that exactly one request is always outstanding.
   A connection the server closes is opened again (counted) and the poll re-sent.

Requests are the minimum a script sends (request line, ``Host``, ``Accept``); a browser adds
``User-Agent``, ``Accept-Language``, cookies and more to every poll. A response is read with
its head and its ``Content-Length`` (or chunked) body and parsed with ``json.loads``.

Bytes are counted on the socket, client side, as the payload written and read (TCP/IP
headers and ACKs are not counted, for neither path): ``delivery_tx``/``delivery_rx``, the
request and the whole response (head and body) of every exchange that delivered at least one
notification, and ``delivered``, the notifications they carried; ``empty_*``, the exchanges
that ended with an empty list (the server's timeout); ``setup_*``, the first exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

from .clients import (
    Stats,
    add_worker_arguments,
    commands,
    connected_socket,
    dump_stats,
    open_all,
    report_ready,
    run_worker,
    source,
)


class Bytes:
    """Socket bytes of one process, by kind of exchange."""

    __slots__ = (
        "delivered",
        "delivery_exchanges",
        "delivery_rx",
        "delivery_tx",
        "empty_exchanges",
        "empty_rx",
        "empty_tx",
        "http_errors",
        "reconnects",
        "rx",
        "setup_rx",
        "setup_tx",
        "tx",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class LPClient(asyncio.Protocol):
    """One keep-alive connection with one long-poll request outstanding."""

    __slots__ = (
        "buf",
        "bytes",
        "cursor",
        "host",
        "path",
        "ready",
        "rx",
        "stats",
        "transport",
        "tx",
        "worker",
    )

    def __init__(self, worker: Worker, host: str, path: str, ready: asyncio.Future) -> None:
        self.worker = worker
        self.stats: Stats = worker.stats
        self.bytes: Bytes = worker.bytes
        self.host = host
        self.path = path
        self.ready = ready
        self.cursor: int | None = None  # None until the first answer
        self.buf = b""
        self.tx = 0  # bytes of the current exchange
        self.rx = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf, self.rx = b"", 0
        self.send()

    def send(self) -> None:
        target = self.path if self.cursor is None else f"{self.path}?after={self.cursor}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        self.tx, self.rx = len(request), 0
        self.bytes.tx += len(request)
        self.transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the first answer: {exc}"))
        elif not self.stats.closing:
            self.worker.reopen(self)

    def data_received(self, data: bytes) -> None:
        self.bytes.rx += len(data)
        self.rx += len(data)
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end].split(b"\r\n")
        length, chunked = None, False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        rest = buf[end + 4 :]
        if chunked:
            body = _dechunk(rest)
            if body is None:
                self.buf = buf
                return
        else:
            if length is None or len(rest) < length:
                self.buf = buf
                return
            body = rest[:length]
        self.buf = b""
        self.answer(head[0], body)

    def answer(self, status: bytes, body: bytes) -> None:
        now = time.time()
        stats, counts = self.stats, self.bytes
        if b" 200 " not in status + b" ":
            counts.http_errors += 1
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(status.decode("latin1")))
                self.transport.close()
                return
            asyncio.get_running_loop().call_later(1.0, self._resend)
            return
        msg = json.loads(body)
        events = msg.get("events") or ()
        if not self.ready.done():
            counts.setup_tx += self.tx
            counts.setup_rx += self.rx
            stats.hello += 1
            stats.open += 1
            self.ready.set_result(None)
        elif events:
            counts.delivery_tx += self.tx
            counts.delivery_rx += self.rx
            counts.delivery_exchanges += 1
            counts.delivered += len(events)
        else:
            counts.empty_tx += self.tx
            counts.empty_rx += self.rx
            counts.empty_exchanges += 1
        self.cursor = msg.get("cursor", self.cursor or 0)
        self.send()  # the next poll goes out before this answer's events are counted
        for event in events:
            event_id = event["id"]
            t = (event.get("data") or {}).get("t", 0)
            stats.received(event_id, now, str(t).encode())

    def _resend(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _dechunk(data: bytes) -> bytes | None:
    """The body of a complete chunked message, or None while it is incomplete."""
    body, pos = b"", 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0], 16)
        start = eol + 2
        if size == 0:
            return body if data.find(b"\r\n", start) >= 0 else None
        if len(data) < start + size + 2:
            return None
        body += data[start : start + size]
        pos = start + size + 2


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.bytes = Bytes()
        self.clients: list[LPClient] = []
        self.urls = args.url
        self.sources = [s for s in (args.source or "").split(",") if s]
        self.failures = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.tasks: set[asyncio.Task] = set()  # reconnections under way

    def _target(self, index: int) -> tuple[str, int, str]:
        url = urlsplit(self.urls[index % len(self.urls)])
        return url.hostname or "127.0.0.1", url.port or 80, url.path or "/"

    async def _socket(self, index: int, host: str, port: int) -> socket.socket:
        return await connected_socket(host, port, source(self.sources, index), 10)

    async def _open_one(self, index: int) -> LPClient | None:
        loop = asyncio.get_running_loop()
        host, port, path = self._target(index)
        for attempt in range(self.args.attempts):
            proto: LPClient | None = None
            try:
                sock = await self._socket(index, host, port)
                ready = loop.create_future()
                proto = LPClient(self, f"{host}:{port}", path, ready)
                await loop.create_connection(lambda p=proto: p, sock=sock)
                await asyncio.wait_for(ready, self.args.handshake_timeout)
                return proto
            except (TimeoutError, OSError, ConnectionError) as exc:
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()
                name = type(exc).__name__ + (f": {exc}" if isinstance(exc, ConnectionError) else "")
                self.errors[name[:120]] = self.errors.get(name[:120], 0) + 1
                if attempt + 1 < self.args.attempts:
                    self.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
        self.failures += 1
        return None

    def reopen(self, proto: LPClient) -> None:
        task = asyncio.ensure_future(self._reopen(proto))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reopen(self, proto: LPClient) -> None:
        """The server closed a keep-alive connection: open another, send the poll again."""
        loop = asyncio.get_running_loop()
        index = self.clients.index(proto) if proto in self.clients else 0
        host, port, _ = self._target(index)
        for attempt in range(self.args.attempts):
            try:
                sock = await self._socket(index, host, port)
                await loop.create_connection(lambda p=proto: p, sock=sock)
                self.bytes.reconnects += 1
                return
            except (TimeoutError, OSError) as exc:
                name = "reconnect " + type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                await asyncio.sleep(0.2 * (attempt + 1))
        self.stats.open -= 1
        self.stats.closed_after_hello += 1
        self.stats.recheck()

    async def connect(self) -> None:
        report_ready(self, await open_all(self))

    def dump(self) -> None:
        dump_stats(self.stats, {"path": "longpoll", **self.bytes.as_dict()})

    async def main(self) -> None:
        connecting: asyncio.Task | None = None
        async for command, _ in commands():
            if command == "connect" and connecting is None:
                connecting = asyncio.ensure_future(self.connect())
            elif command == "dump":
                self.dump()
        if connecting is not None and not connecting.done():
            connecting.cancel()
        self.stats.closing = True
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_arguments(parser, url="http://127.x.x.x:P/path", n="clients (connections) to open")
    run_worker(parser, Worker, "long-poll client worker", argv)


if __name__ == "__main__":
    main()
