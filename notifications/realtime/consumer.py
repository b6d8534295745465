"""The WebSocket consumer: handshake, hello, replay, and client frames (PROTOCOL.md).

A plain ASGI application, one instance per socket. It stays thin: it authenticates (the
session cookie), registers its socket with the process hub, parses frames and calls services.
Live events never pass through it: the hub writes them straight to the socket, so there is no
per-recipient consumer dispatch.

It is not a Channels ``AsyncConsumer`` on purpose: that class opens a channel-layer channel
per socket, runs a dispatch task per message source and hops to a thread to close old
database connections for every message; an idle socket here is one coroutine waiting on
``receive``, and a handshake makes at most two thread hops (none for an anonymous visitor
without cookies or topics).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from .. import audiences, eventlog, i18n, metrics, retention, selectors, services
from .. import channels as object_channels
from ..audiences import Membership
from ..conf import notifications_settings
from . import drain, frames, handshakes, presence_watch
from .auth import session_key_from
from .connection import Connection
from .frames import ClientFrame, FrameError
from .hub import get_hub
from .loads import ReplayRequest
from .origin import header
from .transport import writer_for

logger = logging.getLogger("notifications.realtime")

CLOSE_TOO_LARGE = 1009
CLOSE_FLOOD = 4429
MAX_QUERY_TOPICS = 20
CURSOR_RE = re.compile(r"[0-9]{1,19}\Z")
HANDLED = frozenset(
    {"ping", "resume", "subscribe", "unsubscribe", "read", "read_all", "watch_presence"}
)


class RateLimiter:
    """Fixed-window frame counter, shared by all of a user's sockets in this process."""

    def __init__(self) -> None:
        self._windows: dict[Any, list[float]] = {}
        self._hits = 0

    def hit(self, key: Any) -> int:
        """Count one frame; return how many frames are over the limit in this window."""
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= notifications_settings.RATE_LIMIT_WINDOW:
            window = self._windows[key] = [now, 0.0]
        window[1] += 1
        self._hits += 1
        if self._hits % 4096 == 0:
            self.prune()
        return max(0, int(window[1]) - notifications_settings.RATE_LIMIT_FRAMES)

    def forget(self, key: Any) -> None:
        self._windows.pop(key, None)

    def prune(self) -> None:
        """Drop windows that have ended (a user's budget survives a reconnect until then)."""
        now, length = time.monotonic(), notifications_settings.RATE_LIMIT_WINDOW
        for key in [k for k, (start, _) in self._windows.items() if now - start >= length]:
            del self._windows[key]


_limiter = RateLimiter()


def _unsubscribe(user: Any, slug: str) -> tuple[Any, bool]:
    topic = services.unsubscribe(user, slug)
    return topic, audiences.follows(user, topic)


class NotificationConsumer:
    """ASGI application for ``ws[s]://HOST/ws/notifications/``."""

    __slots__ = ("close_code", "closing", "conn", "hub", "receive", "scope", "send", "user")

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.user: Any = AnonymousUser()
        self.conn: Connection | None = None
        self.closing = False
        self.close_code: int | None = None  # the code this server closed the socket with

    @classmethod
    def as_asgi(cls) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await cls(scope, receive, send).run()

        return app

    async def run(self) -> None:
        code = None
        drain.running.add(self)
        try:
            while True:
                message = await self.receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    if not self.closing:
                        await self.on_frame(message.get("text"), message.get("bytes"))
                elif kind == "websocket.connect":
                    if not await self.on_connect():
                        return  # refused before accept
                elif kind == "websocket.disconnect":
                    code = message.get("code")
                    return
        except Exception:
            # Typically a send to a client that has just gone: the server raises (uvicorn)
            # or refuses it, and the disconnect message may never be read.
            # No traceback at INFO: after a restart thousands of clients that gave up
            # make these, and formatting tracebacks then costs the event loop real time.
            logger.info(
                "ws.error %s: the socket failed: %r",
                self.conn.id if self.conn else "-",
                sys.exc_info()[1],
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            eventlog.emit(
                "error",
                where="socket",
                conn=self.conn.id if self.conn else None,
                error=eventlog.describe(sys.exc_info()[1]),
            )
        finally:
            # However the socket ends, it leaves the hub (else a user's cap fills up).
            self.on_disconnect(code)
            drain.running.discard(self)

    # Handshake -------------------------------------------------------------------------------

    async def reject(self, reason: str, *, result: str = "limit", **context: Any) -> bool:
        details = " ".join(f"{key}={value}" for key, value in context.items())
        logger.warning("ws.reject reason=%r %s", reason, details)
        metrics.handshake(result)
        eventlog.emit("reject", reason=reason, **context)
        await self.send({"type": "websocket.close"})  # before accept: HTTP 403
        return False

    async def on_connect(self) -> bool:
        scope = self.scope
        ip = (scope.get("client") or (None, None))[0]
        if drain.draining():
            return await self.reject("draining", result="draining", client=ip)
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        cursor, cursor_error = _query_cursor(query)
        slugs = query.get("topic", [])
        if len(slugs) > MAX_QUERY_TOPICS:
            return await self.reject(
                f"more than {MAX_QUERY_TOPICS} topics", result="bad_request", client=ip
            )
        session_key = session_key_from(header(scope, b"cookie"))
        self.hub = hub = get_hub()
        try:
            await hub.ready()
            if session_key or slugs:
                user, membership, topics, topic_errors = await handshakes.handshake_batches(
                    (session_key, slugs)
                )
            else:  # an anonymous visitor without cookies: nothing to look up
                user, membership, topics, topic_errors = AnonymousUser(), Membership(None), [], []
        except Exception:
            logger.exception("handshake failed (database unavailable?)")
            eventlog.emit("error", where="handshake", error=eventlog.describe(sys.exc_info()[1]))
            return await self.reject("server error", result="error", client=ip)
        self.user = user
        refusal = hub.admit(membership.user_id, ip)
        if refusal:
            return await self.reject(refusal, user=membership.user_id, client=ip)
        self.conn = conn = Connection(
            writer=writer_for(self.send, allow_fast=notifications_settings.FAST_WRITES),
            max_buffered=notifications_settings.MAX_BUFFERED_BYTES,
            close=self.close_from_hub,
            membership=membership,
            session_key=session_key if membership.user_id else None,
            auth_hash=getattr(user, "notifications_auth_hash", None),
            ip=ip,
        )
        conn.extensions = frames.extensions(query)
        conn.language = i18n.socket_language(
            query.get("lang", ()), header(scope, b"accept-language")
        )
        conn.pause()  # live events wait until hello (and the replay) are out
        start = hub.attach(conn)
        for topic_id in topics:
            hub.follow(conn, topic_id, stored=user.is_authenticated)
        subprotocol = (
            frames.SUBPROTOCOL if frames.SUBPROTOCOL in scope.get("subprotocols", []) else None
        )
        await self.send({"type": "websocket.accept", "subprotocol": subprotocol})
        metrics.handshake("accepted")
        conn.writer.forget_handshake()
        # DEBUG: one line per socket was ~10 % of an anonymous handshake's cost (py-spy), and
        # a restart brings every client back at once. Rejections stay at WARNING.
        logger.debug(
            "ws.connect %s user=%s client=%s cursor=%s writer=%s",
            conn.id,
            membership.user_id,
            ip,
            cursor,
            type(conn.writer).__name__,
        )
        eventlog.emit("connect", conn=conn.id, user=membership.user_id, client=ip, cursor=cursor)
        greeting = await self._greeting(start, cursor)
        await self.send_frame(
            {
                "type": "hello",
                "protocol": frames.PROTOCOL_VERSION,
                "user": user.get_username() if user.is_authenticated else None,
                "unread": greeting.unread,
                "cursor": greeting.cursor,
                # Extension: this socket's id, for push(..., exclude=) ("to others").
                "socket": conn.id,
            }
        )
        errors = [("bad_request", cursor_error)] if cursor_error else []
        for code, message in errors + topic_errors:
            await self.send_frame(frames.error(code, message))
        if cursor is not None:
            await self._replay(after=cursor, upto=start, ref=None)
        await conn.resume()
        return True

    async def _greeting(self, start: int, cursor: int | None) -> selectors.Greeting:
        assert self.conn is not None
        if not self.user.is_authenticated and not self.conn.anon_topics:
            # Only announcements to everyone: the hub tracks the newest one.
            return selectors.Greeting(cursor=self.hub.newest_public, unread=None)
        try:
            # Count what this socket will not bring live: up to its start, or up to the
            # client's cursor when that is ahead (events the page already rendered).
            return await handshakes.greeting_batches(
                (self.user, start, max(start, cursor or 0), self.conn.anon_topics)
            )
        except Exception:
            logger.exception("hello queries failed for %s", self.conn.id)
            return selectors.Greeting(cursor=start, unread=None)

    async def close(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if self.conn is None or not self.conn.writer.close_frame(code):
            await self.send({"type": "websocket.close", "code": code})

    async def close_from_hub(self, code: int) -> None:
        if self.conn is not None:
            self.hub.detach(self.conn)
        await self.close(code)

    def on_disconnect(self, code: int | None) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        self.hub.detach(conn)
        if conn.user_id is None:
            _limiter.forget(conn.id)  # an anonymous budget is per connection
        logger.debug("ws.disconnect %s code=%s", conn.id, code)
        if self.close_code is not None:
            eventlog.emit(
                "close", conn=conn.id, user=conn.user_id, code=self.close_code, by="server"
            )
        else:
            eventlog.emit("close", conn=conn.id, user=conn.user_id, code=code, by="client")

    # Frames ----------------------------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send({"type": "websocket.send", "text": frames.encode(frame)})

    async def on_frame(self, text: str | None, data: bytes | None) -> None:
        if self.conn is None:
            return
        if await self._limited():
            return
        limit = notifications_settings.MAX_FRAME_BYTES
        size = len(text.encode()) if text is not None else len(data or b"")
        if size > limit:
            await self.send_frame(frames.error("too_large", f"frames are limited to {limit} bytes"))
            await self.close(CLOSE_TOO_LARGE)
            return
        if text is None:
            await self.send_frame(frames.error("bad_frame", "binary frames are not supported"))
            return
        frame: ClientFrame | None = None
        try:
            frame = frames.parse(text)
            handler = getattr(self, "on_" + frame.type) if frame.type in HANDLED else None
            if handler is None:
                raise FrameError(
                    "unknown_type", f"unknown frame type {frame.type[:50]!r}", frame.ref
                )
            await handler(frame)
        except FrameError as exc:
            await self.send_frame(exc.frame())
        except services.TopicError as exc:
            await self.send_frame(frames.error(exc.code, str(exc), frame.ref if frame else None))
        except Exception:
            logger.exception("frame handling failed on %s", self.conn.id)
            eventlog.emit(
                "error",
                where="frame",
                conn=self.conn.id,
                error=eventlog.describe(sys.exc_info()[1]),
            )
            await self.send_frame(
                frames.error(
                    "internal_error",
                    "the server could not handle this frame",
                    frame.ref if frame else None,
                )
            )

    async def _limited(self) -> bool:
        assert self.conn is not None
        key = self.conn.user_id if self.conn.user_id is not None else self.conn.id
        over = _limiter.hit(key)
        if not over:
            return False
        if over > notifications_settings.RATE_LIMIT_GRACE:
            logger.warning("ws.flood %s user=%s: closing", self.conn.id, self.conn.user_id)
            await self.close(CLOSE_FLOOD)
        elif over == 1:
            await self.send_frame(
                frames.error("rate_limited", "too many frames; slow down or the socket will close")
            )
        return True

    # Handlers (one per client frame type) ------------------------------------------------------

    async def on_ping(self, frame: ClientFrame) -> None:
        await self.send_frame(frames.with_ref({"type": "pong"}, frame.ref))

    async def on_resume(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        cursor = frame.cursor()
        self.conn.pause()
        try:
            await self._replay(after=cursor, upto=self.hub.horizon, ref=frame.ref)
        finally:
            await self.conn.resume()

    async def on_subscribe(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        name = frame.topic_or_channel()
        cursor = frame.cursor(required=False)
        is_channel = "." in name
        if is_channel:
            if not await database_sync_to_async(object_channels.may_follow)(self.user, name):
                raise FrameError("forbidden", f"channel {name!r} is not open to you", frame.ref)
            topic_id = None
        else:
            topic_id = (await database_sync_to_async(services.subscribe)(self.user, name)).pk
        self.conn.pause()
        try:
            upto = self.hub.horizon
            if is_channel:
                self.hub.follow_channel(self.conn, name)
            else:
                assert topic_id is not None
                self.hub.follow(self.conn, topic_id, stored=self.user.is_authenticated)
            if cursor is not None:
                await self._send_replay(
                    after=cursor, upto=upto, topic_id=topic_id, channel=name if is_channel else None
                )
            await self.send_frame(frames.with_ref({"type": "subscribed", "topic": name}, frame.ref))
        finally:
            await self.conn.resume()

    async def on_unsubscribe(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        name = frame.topic_or_channel()
        if "." in name:
            self.hub.unfollow_channel(self.conn, name)  # idempotent, like topics
        else:
            topic, still_follows = await database_sync_to_async(_unsubscribe)(self.user, name)
            if not still_follows:  # a topic that staff granted (group, member) stays followed
                self.hub.unfollow(self.conn, topic.pk)
        await self.send_frame(frames.with_ref({"type": "unsubscribed", "topic": name}, frame.ref))

    async def on_read(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        ids = frame.ids()
        self._require_user(frame)
        count = await database_sync_to_async(services.mark_read)(
            self.user, ids, origin=self.conn.id
        )
        await self.send_frame(frames.with_ref({"type": "unread", "count": count}, frame.ref))

    async def on_watch_presence(self, frame: ClientFrame) -> None:
        # Staff's live "Online now" page (realtime/presence_watch.py, docs/admin.md).
        assert self.conn is not None
        if not await database_sync_to_async(presence_watch.may_watch)(self.user):
            raise FrameError("forbidden", "presence is for staff who may view it", frame.ref)
        await self.send_frame(frames.with_ref(await presence_watch.current(), frame.ref))
        presence_watch.watch(self.hub, self.conn)

    async def on_read_all(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        self._require_user(frame)
        count = await database_sync_to_async(services.mark_all_read)(self.user, origin=self.conn.id)
        await self.send_frame(frames.with_ref({"type": "unread", "count": count}, frame.ref))

    def _require_user(self, frame: ClientFrame) -> None:
        if not self.user.is_authenticated:
            raise FrameError("forbidden", "sign in to keep an inbox", frame.ref)

    # Replay ----------------------------------------------------------------------------------

    async def _send_replay(
        self, *, after: int, upto: int, topic_id: int | None = None, channel: str | None = None
    ) -> tuple[int, bool]:
        """Send missed events (``after < id <= upto``) oldest first; return (count, complete).

        Ids at or below what this socket already sent are skipped: ids on one connection
        strictly increase. The caller has paused the connection.
        """
        assert self.conn is not None
        limit = notifications_settings.REPLAY_LIMIT
        after = max(after, self.conn.last_sent)
        conn = self.conn
        if self.user.is_authenticated or conn.anon_topics or conn.channels or topic_id is not None:
            # Batched with the replays that arrive together (a restart brings every client
            # back at once): one statement for all the signed-in ones (loads.load_replays).
            texts = await handshakes.replay_batches(
                ReplayRequest(
                    self.user,
                    after=after,
                    upto=upto,
                    limit=limit + 1,
                    extra_topic_ids=tuple(conn.anon_topics),
                    topic_id=topic_id,
                    channels=tuple(sorted(conn.channels | ({channel} if channel else set()))),
                    channel=channel,
                    language=conn.language,
                )
            )
        else:
            # Announcements to everyone only: the same for every such socket, so sockets
            # resuming from the same cursor (all of them, after a restart) share one query.
            texts = await self.hub.public_replay(
                after=after, upto=upto, limit=limit + 1, language=conn.language
            )
        # Also incomplete when a purge deleted events above the cursor (retention.py).
        complete = len(texts) <= limit and not await retention.purged_after(after)
        sent = 0
        for event_id, text, is_notification in texts[:limit]:
            await self.send({"type": "websocket.send", "text": text})
            self.conn.last_sent = event_id
            sent += is_notification
        self.conn.position = max(self.conn.position, self.conn.last_sent)
        metrics.REPLAYED.inc(sent)
        return sent, complete

    async def _replay(self, *, after: int, upto: int, ref: str | int | None) -> None:
        """Replay for a resume cursor, then ``replayed``. Everything up to ``upto`` (and up to
        the client's own cursor, when it is ahead of this process) is settled afterwards."""
        assert self.conn is not None
        count, complete = await self._send_replay(after=after, upto=upto)
        eventlog.emit(
            "replay",
            conn=self.conn.id,
            user=self.conn.user_id,
            after=after,
            count=count,
            complete=complete,
        )
        self.conn.position = max(self.conn.position, upto, after)
        await self.send_frame(
            frames.with_ref({"type": "replayed", "count": count, "complete": complete}, ref)
        )


def _query_cursor(query: dict[str, list[str]]) -> tuple[int | None, str | None]:
    values = query.get("cursor")
    if not values:
        return None, None
    value = values[0]
    # str.isdigit() is true for "²", "①" and "٣" too (int() refuses the first two and reads
    # the last as 3): only ASCII digits make a cursor.
    if not CURSOR_RE.match(value) or int(value) > frames.MAX_ID:
        return None, "'cursor' must be a non-negative integer"
    return int(value), None
