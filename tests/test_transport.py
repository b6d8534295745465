"""Frame writing: pre-built frames on daphne's and uvicorn's transports, the ASGI fallback,
and the send-buffer cap for clients that stop reading."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
from channels.db import database_sync_to_async as db
from websockets.asyncio.client import connect as ws_connect

from notifications import notify
from notifications.realtime.transport import AsgiWriter, Frame, writer_for

from .server import ServerProcess
from .test_security import LogWatch

SERVERS = ["daphne", "uvicorn", "uvicorn-websockets-sansio"]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_frame_wire_format(size):
    text = "x" * size
    wire = Frame(text).wire
    assert wire[0] == 0x81  # FIN + text opcode
    assert wire[1] & 0x80 == 0  # server frames are not masked
    if size < 126:
        assert wire[1] == size and wire[2:] == text.encode()
    elif size < 65536:
        assert wire[1] == 126 and struct.unpack("!H", wire[2:4])[0] == size
        assert wire[4:] == text.encode()
    else:
        assert wire[1] == 127 and struct.unpack("!Q", wire[2:10])[0] == size
        assert wire[10:] == text.encode()


def test_frame_encodes_once():
    frame = Frame('{"type":"notification","title":"é"}')
    assert frame.wire is frame.wire
    assert frame.wire[2:].decode() == frame.text


def test_unknown_servers_get_the_asgi_writer():
    async def send(message):
        pass

    assert isinstance(writer_for(send), AsgiWriter)
    assert isinstance(writer_for(send, allow_fast=False), AsgiWriter)


async def _two_clients_receive(server: ServerProcess) -> None:
    async with (
        ws_connect(server.ws_url, origin=server.origin) as first,
        ws_connect(server.ws_url, origin=server.origin) as second,
    ):
        for ws in (first, second):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
        event = await db(notify)("everyone", "fan-out", body="é ✓ " * 50)
        for ws in (first, second):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["id"], frame["body"]) == (event.id, "é ✓ " * 50)
        await first.send(json.dumps({"type": "ping", "ref": 1}))
        assert json.loads(await asyncio.wait_for(first.recv(), 5)) == {"type": "pong", "ref": 1}


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("fast", [True, False])
async def test_delivery_through_each_writer(kind, fast):
    writer = ("DaphneWriter" if kind == "daphne" else "UvicornWriter") if fast else "AsgiWriter"
    env = {"NOTIFICATIONS_POLL_INTERVAL": "0.2", "NOTIFICATIONS_FAST_WRITES": json.dumps(fast)}
    with ServerProcess(server=kind, **env) as server:
        await _two_clients_receive(server)
    assert f"writer={writer}" in server.output()


def _stalled_socket(port: int) -> socket.socket:
    """A client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/notifications/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", SERVERS)
async def test_client_that_stops_reading_is_dropped_and_others_are_unaffected(kind):
    env = {"NOTIFICATIONS_POLL_INTERVAL": "0.1", "NOTIFICATIONS_MAX_BUFFERED_BYTES": "1048576"}
    with ServerProcess(server=kind, **env) as server:
        stalled = _stalled_socket(server.port)
        try:
            async with ws_connect(server.ws_url, origin=server.origin, max_size=None) as reader:
                assert json.loads(await asyncio.wait_for(reader.recv(), 5))["type"] == "hello"
                body = "x" * 100_000
                sent, got = [], []
                # 8 MB in bursts of 500 KB: more than the kernel buffers between the server
                # and the stalled client, while a reading client never falls 1 MB behind.
                for burst in range(16):
                    for i in range(5):
                        sent.append((await db(notify)("everyone", f"{burst}.{i}", body=body)).id)
                    while len(got) < len(sent):
                        frame = json.loads(await asyncio.wait_for(reader.recv(), 15))
                        got.append(frame["id"])
                assert got == sent  # the reader got everything, in order
            deadline = asyncio.get_running_loop().time() + 10
            while "ws.slow" not in server.output():
                assert asyncio.get_running_loop().time() < deadline, server.output()[-3000:]
                await asyncio.sleep(0.1)
        finally:
            stalled.close()
        # The server is healthy: a new client gets its hello.
        async with ws_connect(server.ws_url, origin=server.origin) as again:
            assert json.loads(await asyncio.wait_for(again.recv(), 5))["type"] == "hello"


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", SERVERS)
async def test_sockets_that_vanish_mid_answer_leave_the_hub(kind, amake_user):
    """A client that sends a frame and drops the connection before the answer: the answer's
    send fails, and the socket must still leave the hub (else the user's cap fills up)."""
    from .support import session_cookie

    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    env = {"NOTIFICATIONS_MAX_CONNECTIONS_PER_USER": "3"}
    with ServerProcess(server=kind, **env) as server:
        log = LogWatch(server)
        for attempt in range(12):
            async with ws_connect(
                server.ws_url, origin=server.origin, additional_headers={"Cookie": cookie}
            ) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
                await ws.send(json.dumps({"type": "read_all"}))
                ws.transport.abort()  # gone before the answer
            # The socket leaves the hub (its ws.disconnect line comes after that). Waited
            # for: handshakes no longer queue behind the vanished socket's read_all on one
            # database thread (HANDSHAKE_THREADS), so the next one can overtake it.
            await log.until(r"ws\.disconnect ", count=attempt + 1)
        async with ws_connect(
            server.ws_url, origin=server.origin, additional_headers={"Cookie": cookie}
        ) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["user"] == "alice"


async def _sansio_socket(*, allow_fast: bool):
    """The real uvicorn websockets-sansio protocol, in process, after the app's accept:
    (protocol, its fake transport, the writer ``writer_for`` gave the app)."""
    from uvicorn.config import Config
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState

    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set_result(writer_for(send, allow_fast=allow_fast))
        await receive()

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out = bytearray()

        def write(self, data) -> None:
            self.out += data

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1234) if name in ("peername", "sockname") else default

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    config = Config(app=app, ws="websockets-sansio", ws_per_message_deflate=False, lifespan="off")
    config.load()
    protocol = WebSocketsSansIOProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.data_received(
        (
            "GET /ws/notifications/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Cookie: sessionid=secret\r\n\r\n"
        ).encode()
    )
    return protocol, transport, await asyncio.wait_for(accepted, 5)


@pytest.mark.asyncio
async def test_uvicorn_sansio_handshake_objects_are_released_after_accept():
    """After the accept, forget_handshake() leaves no handshake Request/Response reachable
    from the protocol and empties the Request that websockets' parser keeps, and the socket
    still works."""
    from notifications.realtime.transport import UvicornWriter

    protocol, transport, writer = await _sansio_socket(allow_fast=True)
    assert isinstance(writer, UvicornWriter)
    request = protocol.request
    assert request.headers["Cookie"] == "sessionid=secret"
    writer.forget_handshake()
    assert protocol.request is None and protocol.response is None
    assert list(request.headers.raw_items()) == []
    assert transport.out.startswith(b"HTTP/1.1 101")
    assert writer.write_now(Frame('{"type":"pong"}'))
    assert transport.out.endswith(Frame('{"type":"pong"}').wire)
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_handshake_objects_are_released_without_fast_writes_too():
    """FAST_WRITES off: frames go through the ASGI send, but the server's own writer still
    releases what the server keeps of the handshake."""
    protocol, _, writer = await _sansio_socket(allow_fast=False)
    assert isinstance(writer, AsgiWriter)
    request = protocol.request
    writer.forget_handshake()
    assert protocol.request is None and protocol.response is None
    assert list(request.headers.raw_items()) == []
    protocol.connection_lost(None)
