"""The WebSocket consumer: handshake, hello, replay, and client frames (PROTOCOL.md).

It stays thin: it authenticates (the session, via AuthMiddleware), registers its socket with
the process hub, parses frames and calls services. Live events never pass through it: the hub
writes them straight to the socket, so there is no per-recipient consumer dispatch.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .. import selectors, services
from ..audiences import membership_of
from ..conf import notifications_settings
from . import frames
from .connection import Connection
from .frames import ClientFrame, FrameError
from .hub import Hub, get_hub
from .origin import RAW_SEND_KEY
from .transport import writer_for

logger = logging.getLogger("notifications.realtime")

CLOSE_TOO_LARGE = 1009
CLOSE_FLOOD = 4429


class RateLimiter:
    """Fixed-window frame counter, shared by all of a user's sockets in this process."""

    def __init__(self) -> None:
        self._windows: dict[Any, list[float]] = {}

    def hit(self, key: Any) -> int:
        """Count one frame; return how many frames are over the limit in this window."""
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= notifications_settings.RATE_LIMIT_WINDOW:
            window = self._windows[key] = [now, 0.0]
        window[1] += 1
        return max(0, int(window[1]) - notifications_settings.RATE_LIMIT_FRAMES)

    def forget(self, key: Any) -> None:
        self._windows.pop(key, None)


_limiter = RateLimiter()


class NotificationConsumer(AsyncWebsocketConsumer):
    # The hub, not each consumer, listens on the channel layer: an alias that names no layer
    # stops Channels from opening a layer channel per socket.
    channel_layer_alias = "__notifications_hub_only__"

    hub: Hub
    conn: Connection | None = None

    # Handshake -------------------------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.user = self.scope["user"]
        self.hub = get_hub()
        client = self.scope.get("client") or (None, None)
        ip = client[0]
        try:
            await self.hub.ready()
            membership = await database_sync_to_async(membership_of)(self.user)
        except Exception:
            logger.exception("ws.reject reason=startup client=%s", ip)
            await self.close()
            return
        refusal = self.hub.admit(membership.user_id, ip)
        if refusal:
            logger.warning("ws.reject reason=%r user=%s client=%s", refusal, membership.user_id, ip)
            await self.close()
            return
        session = self.scope.get("session")
        self.conn = Connection(
            writer=writer_for(
                self.scope.get(RAW_SEND_KEY, self.base_send),
                allow_fast=notifications_settings.FAST_WRITES,
            ),
            max_buffered=notifications_settings.MAX_BUFFERED_BYTES,
            close=self.close_from_hub,
            membership=membership,
            session_key=getattr(session, "session_key", None) if membership.user_id else None,
            ip=ip,
        )
        cursor, cursor_error = _query_cursor(self.scope)
        query_errors = [cursor_error] if cursor_error else []
        topics, topic_errors = await database_sync_to_async(_follow_from_query)(
            self.user, self.scope
        )
        self.conn.pause()  # live events wait until hello (and the replay) are out
        start = self.hub.attach(self.conn)
        for topic_id in topics:
            self.hub.follow(self.conn, topic_id, stored=self.user.is_authenticated)
        subprotocol = (
            frames.SUBPROTOCOL if frames.SUBPROTOCOL in self.scope.get("subprotocols", []) else None
        )
        await self.accept(subprotocol)
        logger.info(
            "ws.connect %s user=%s client=%s cursor=%s writer=%s",
            self.conn.id,
            membership.user_id,
            ip,
            cursor,
            type(self.conn.writer).__name__,
        )
        try:
            # Count what this socket will not bring live: up to its start, or up to the
            # client's cursor when that is ahead (events the page already rendered).
            greeting = await database_sync_to_async(selectors.greeting)(
                self.user,
                upto=start,
                counted_to=max(start, cursor or 0),
                extra_topic_ids=self.conn.anon_topics,
            )
        except Exception:
            logger.exception("hello queries failed for %s", self.conn.id)
            greeting = selectors.Greeting(cursor=start, unread=None)
        await self.send_frame(
            {
                "type": "hello",
                "protocol": frames.PROTOCOL_VERSION,
                "user": self.user.get_username() if self.user.is_authenticated else None,
                "unread": greeting.unread,
                "cursor": greeting.cursor,
            }
        )
        for code, message in [("bad_request", e) for e in query_errors] + topic_errors:
            await self.send_frame(frames.error(code, message))
        if cursor is not None:
            await self._replay(after=cursor, upto=start, ref=None)
        await self.conn.resume()

    async def close_from_hub(self, code: int) -> None:
        if self.conn is not None:
            self.hub.detach(self.conn)
        await self.close(code)

    async def disconnect(self, code: int) -> None:
        if self.conn is not None:
            self.hub.detach(self.conn)
            if not self.user.is_authenticated:
                _limiter.forget(self.conn.id)
            logger.info("ws.disconnect %s code=%s", self.conn.id, code)

    # Frames ----------------------------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=frames.encode(frame))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.conn is None:
            return
        if await self._limited():
            return
        limit = notifications_settings.MAX_FRAME_BYTES
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > limit:
            await self.send_frame(frames.error("too_large", f"frames are limited to {limit} bytes"))
            await self.close(CLOSE_TOO_LARGE)
            return
        if text_data is None:
            await self.send_frame(frames.error("bad_frame", "binary frames are not supported"))
            return
        frame: ClientFrame | None = None
        try:
            frame = frames.parse(text_data)
            handler = getattr(self, "on_" + frame.type, None) if frame.type in HANDLED else None
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
        slug = frame.slug()
        cursor = frame.cursor(required=False)
        topic = await database_sync_to_async(services.subscribe)(self.user, slug)
        self.conn.pause()
        try:
            upto = self.hub.horizon
            self.hub.follow(self.conn, topic.pk, stored=self.user.is_authenticated)
            if cursor is not None:
                await self._send_replay(after=cursor, upto=upto, topic_id=topic.pk)
            await self.send_frame(frames.with_ref({"type": "subscribed", "topic": slug}, frame.ref))
        finally:
            await self.conn.resume()

    async def on_unsubscribe(self, frame: ClientFrame) -> None:
        assert self.conn is not None
        slug = frame.slug()
        topic = await database_sync_to_async(services.unsubscribe)(self.user, slug)
        self.hub.unfollow(self.conn, topic.pk)
        await self.send_frame(frames.with_ref({"type": "unsubscribed", "topic": slug}, frame.ref))

    async def on_read(self, frame: ClientFrame) -> None:
        ids = frame.ids()
        self._require_user(frame)
        count = await database_sync_to_async(services.mark_read)(
            self.user, ids, origin=self.conn.id
        )
        await self.send_frame(frames.with_ref({"type": "unread", "count": count}, frame.ref))

    async def on_read_all(self, frame: ClientFrame) -> None:
        self._require_user(frame)
        count = await database_sync_to_async(services.mark_all_read)(self.user, origin=self.conn.id)
        await self.send_frame(frames.with_ref({"type": "unread", "count": count}, frame.ref))

    def _require_user(self, frame: ClientFrame) -> None:
        if not self.user.is_authenticated:
            raise FrameError("forbidden", "sign in to keep an inbox", frame.ref)

    # Replay ----------------------------------------------------------------------------------

    async def _send_replay(
        self, *, after: int, upto: int, topic_id: int | None = None
    ) -> tuple[int, bool]:
        """Send missed events (``after < id <= upto``) oldest first; return (count, complete).

        Ids at or below what this socket already sent are skipped: ids on one connection
        strictly increase. The caller has paused the connection.
        """
        assert self.conn is not None
        limit = notifications_settings.REPLAY_LIMIT
        events = await database_sync_to_async(selectors.replay)(
            self.user,
            after=max(after, self.conn.last_sent),
            upto=upto,
            limit=limit + 1,
            extra_topic_ids=self.conn.anon_topics,
            topic_id=topic_id,
        )
        complete = len(events) <= limit
        for event in events[:limit]:
            await self.send_frame(frames.notification(event, read=event.is_read, replay=True))
            self.conn.last_sent = event.id
        self.conn.position = max(self.conn.position, self.conn.last_sent)
        return min(len(events), limit), complete

    async def _replay(self, *, after: int, upto: int, ref: str | int | None) -> None:
        """Replay for a resume cursor, then ``replayed``. Everything up to ``upto`` (and up to
        the client's own cursor, when it is ahead of this process) is settled afterwards."""
        assert self.conn is not None
        count, complete = await self._send_replay(after=after, upto=upto)
        self.conn.position = max(self.conn.position, upto, after)
        await self.send_frame(
            frames.with_ref({"type": "replayed", "count": count, "complete": complete}, ref)
        )


HANDLED = frozenset({"ping", "resume", "subscribe", "unsubscribe", "read", "read_all"})


MAX_QUERY_TOPICS = 20


def _query(scope: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin1"))


def _follow_from_query(user: Any, scope: dict[str, Any]) -> tuple[list[int], list[tuple[str, str]]]:
    """Topics named by ``?topic=slug`` (repeatable): followed before the replay, so that an
    anonymous visitor's reconnect replays them too. Returns topic ids and (code, message) errors.
    """
    slugs = _query(scope).get("topic", [])
    if len(slugs) > MAX_QUERY_TOPICS:
        return [], [("bad_request", f"at most {MAX_QUERY_TOPICS} topics on connect")]
    topics, errors = [], []
    for slug in slugs:
        if not frames.SLUG_RE.match(slug):
            errors.append(("bad_request", "'topic' must be a topic slug"))
            continue
        try:
            topics.append(services.subscribe(user, slug).pk)
        except services.TopicError as exc:
            errors.append((exc.code, str(exc)))
    return topics, errors


def _query_cursor(scope: dict[str, Any]) -> tuple[int | None, str | None]:
    values = _query(scope).get("cursor")
    if not values:
        return None, None
    value = values[0]
    if not value.isdigit() or len(value) > 19 or int(value) > frames.MAX_ID:
        return None, "'cursor' must be a non-negative integer"
    return int(value), None
