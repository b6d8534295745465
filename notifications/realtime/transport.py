"""How the hub writes frames to a socket: the ASGI ``send``, or a server's transport directly.

A server-to-client WebSocket frame is not masked (RFC 6455 section 5.1), so the bytes of one
notification frame are the same for every socket. :class:`Frame` builds them once per event,
and a fast writer puts them straight on the server's transport, skipping the per-socket ASGI
message, the server's reply dispatch and its per-socket framing. Fast writers exist for
daphne (Twisted/autobahn) and uvicorn (its ``websockets`` implementation); anything else, and
the test communicator, gets :class:`AsgiWriter`, the plain ASGI ``send``.

A fast writer also sees how many bytes wait in the socket's send buffer, so a client that stops
reading can be cut off (``MAX_BUFFERED_BYTES``) instead of growing server memory; with the
ASGI fallback that figure is unknown and no cap applies.

These writers reach into the servers' protocol objects (daphne 4.2, uvicorn 0.3x); an
unknown shape falls back to the ASGI send, and tests/test_transport.py runs every writer.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Frame:
    """One encoded text frame, shared by every socket it goes to."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """The complete unmasked WebSocket text frame (FIN, opcode 1), built on first use."""
        if self._wire is None:
            payload = self.text.encode()
            size = len(payload)
            if size < 126:
                header = struct.pack("!BB", 0x81, size)
            elif size < 1 << 16:
                header = struct.pack("!BBH", 0x81, 126, size)
            else:
                header = struct.pack("!BBQ", 0x81, 127, size)
            self._wire = header + payload
        return self._wire


class AsgiWriter:
    """The portable path: one ``websocket.send`` ASGI message per frame.

    ``native``: the server's own writer when there is one but fast writes are off. Frames still
    go through ASGI; what the ASGI path cannot do (daphne's policy close codes, releasing what
    the server keeps of the handshake) is still done by it."""

    fast = False
    __slots__ = ("native", "send")

    def __init__(self, send: Send, native: DaphneWriter | UvicornWriter | None = None) -> None:
        self.send = send
        self.native = native

    async def write(self, frame: Frame) -> None:
        await self.send({"type": "websocket.send", "text": frame.text})

    def buffered(self) -> int | None:
        return None

    def abort(self) -> None:
        """Nothing to abort from here: the caller closes through ASGI."""

    def close_frame(self, code: int) -> bool:
        """Start the closing handshake here; False: the caller closes through ASGI."""
        return self.native.close_frame(code) if self.native is not None else False

    def forget_handshake(self) -> None:
        if self.native is not None:
            self.native.forget_handshake()


class DaphneWriter:
    """daphne: write to the autobahn protocol's Twisted transport."""

    fast = True
    __slots__ = ("protocol", "tcp")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        # Twisted's FileDescriptor keeps unsent bytes in dataBuffer (from offset on) and in
        # _tempDataBuffer (_tempDataLen bytes). A TLS transport wraps the TCP one.
        tcp = getattr(protocol, "transport", None)
        while tcp is not None and not hasattr(tcp, "dataBuffer"):
            tcp = getattr(tcp, "transport", None)
        self.tcp = tcp

    async def write(self, frame: Frame) -> None:
        self.write_now(frame)

    def write_now(self, frame: Frame) -> bool:
        protocol = self.protocol
        transport = protocol.transport
        if protocol.state != protocol.STATE_OPEN or transport is None:
            return False
        wire = frame.wire
        tcp = self.tcp
        if (
            tcp is transport
            and not tcp._tempDataLen
            and tcp.offset == len(tcp.dataBuffer)
            and tcp.connected
            and not tcp.disconnecting
            and not getattr(tcp, "TLS", False)
        ):
            # Nothing waits in Twisted's buffer: send now, as asyncio's transports do.
            # Twisted's write() would register the socket with the reactor, send from the
            # callback and unregister: two epoll_ctl calls and a callback per socket per
            # event, 70 % of the server's fan-out time in py-spy (docs/performance.md).
            # What the kernel does not take goes through Twisted's buffer as before.
            try:
                sent = tcp.socket.send(wire)
            except OSError:  # EAGAIN, or a broken socket: Twisted's write sees to it
                sent = 0
            if sent == len(wire):
                return True
            wire = wire[sent:]
        transport.write(wire)
        return True

    def buffered(self) -> int | None:
        tcp = self.tcp
        if tcp is None:
            return None
        return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen

    def abort(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def close_frame(self, code: int) -> bool:
        # daphne's ASGI close goes through autobahn's sendClose, which refuses every code but
        # 1000 and 3000-4999 (a close *requested by an application* in autobahn's reading), so
        # 1008 and 1009 would become an exception and then 1011. Send the frame directly.
        # https://github.com/django/daphne/issues/374, crossbario/autobahn-python#1642
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return False
        protocol.sendCloseFrame(code=code, isReply=False)
        return True

    def forget_handshake(self) -> None:
        # daphne leaves two reference cycles per socket (daphne 4.2 with Twisted and autobahn
        # 26): the upgraded HTTPChannel stays the TCP transport's producer for the socket's
        # life, and it and its finished WebRequest refer to each other (channel.requests,
        # request.channel); and autobahn resolves ``is_closed`` with the protocol itself. The
        # collector would free them, but GcPolicy freezes sockets that stay open, so each
        # closed socket (~60 objects, ~15 KiB) would wait for the planned full collection.
        # Without the cycles, reference counting frees it at close (tests/test_server_cycles).
        requests = getattr(getattr(self.tcp, "producer", None), "requests", None)
        if isinstance(requests, list):
            requests.clear()
        is_closed = getattr(self.protocol, "is_closed", None)
        if hasattr(is_closed, "addCallback"):
            is_closed.addCallback(_drop_result)


def _drop_result(result: Any) -> None:
    """A Deferred callback that lets go of the result (daphne's protocol, see above)."""


class UvicornWriter:
    """uvicorn with ``--ws websockets`` or ``websockets-sansio``: write to the asyncio
    transport. ``state_holder`` is the object whose ``state`` is the websockets ``State``."""

    fast = True
    __slots__ = ("open_state", "protocol", "state_holder")

    def __init__(self, protocol: Any, state_holder: Any, open_state: Any) -> None:
        self.protocol = protocol
        self.state_holder = state_holder
        self.open_state = open_state

    async def write(self, frame: Frame) -> None:
        self.write_now(frame)

    def write_now(self, frame: Frame) -> bool:
        protocol = self.protocol
        if self.state_holder.state is not self.open_state or protocol.transport is None:
            return False
        protocol.transport.write(frame.wire)
        return True

    def buffered(self) -> int | None:
        transport = self.protocol.transport
        return None if transport is None else transport.get_write_buffer_size()

    def abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.abort()

    def close_frame(self, code: int) -> bool:
        return False  # uvicorn's ASGI close accepts every code the protocol allows

    def forget_handshake(self) -> None:
        # uvicorn's websockets-sansio protocol keeps the handshake's websockets Request and
        # Response for the socket's life, though it reads them only until the accept is sent
        # (uvicorn 0.30-0.54, protocols/websockets/websockets_sansio_impl.py), and websockets'
        # ServerProtocol.parse() generator keeps the Request in a local variable for as long
        # (websockets 14-17, server.py). Their Headers are ~3-4 KiB of an idle socket's ~23
        # (tracemalloc at 2,000 sockets). Only that protocol, and only attributes it has, are
        # touched; the Request's headers are emptied since the generator cannot be reached.
        protocol = self.protocol
        if self.state_holder is protocol or not hasattr(protocol, "response"):
            return
        request = getattr(protocol, "request", None)
        headers = getattr(request, "headers", None)
        if headers is not None and hasattr(headers, "clear"):
            headers.clear()
        protocol.request = protocol.response = None


Writer = AsgiWriter | DaphneWriter | UvicornWriter


def writer_for(send: Send, *, allow_fast: bool = True) -> Writer:
    """The fastest writer that ``send`` (the server's own ASGI send) allows."""
    try:
        fast = _fast_writer(send)
    except Exception:  # an unknown server version: fall back, never fail the socket
        logger.debug("no fast writer for %r", send, exc_info=True)
        fast = None
    if fast is not None and allow_fast:
        return fast
    return AsgiWriter(send, native=fast)


def _fast_writer(send: Send) -> Writer | None:
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        module = type(protocol).__module__
        if module == "daphne.ws_protocol" and hasattr(protocol, "STATE_OPEN"):
            return DaphneWriter(protocol)
    owner = getattr(send, "__self__", None)
    module = type(owner).__module__ if owner is not None else ""
    if module.startswith("uvicorn.protocols.websockets.websockets"):
        from websockets.protocol import State

        if module.endswith("websockets_sansio_impl"):
            return UvicornWriter(owner, owner.conn, State.OPEN)
        if module.endswith("websockets_impl"):
            return UvicornWriter(owner, owner, State.OPEN)
    return None
