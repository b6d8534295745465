"""One open socket as the hub sees it: who it is, what it follows, where it is in the stream."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from collections.abc import Awaitable, Callable

from ..audiences import Membership
from .transport import Frame, Writer

logger = logging.getLogger("notifications.realtime")
_ids = itertools.count(1)
_process: tuple[int, str] = (0, "")


def _process_tag() -> str:
    """A short tag unique to this process (renewed after a fork), so that socket ids are
    unique across the server processes of a site (``hello.socket``, ``push(exclude=...)``)."""
    global _process
    if _process[0] != os.getpid():
        _process = (os.getpid(), secrets.token_hex(3))
    return _process[1]


class Connection:
    """Stream state of one socket.

    ``position``: every event id up to it is settled for this socket (sent, replayed, or
    before the cursor the client resumed from); live events at or below it are dropped, which
    keeps ids strictly increasing and shows nothing twice. While ``paused`` (a replay is being
    read from the database), live frames wait in ``pending`` and go out after the replay.
    """

    __slots__ = (
        "anon_topics",
        "auth_hash",
        "channels",
        "close",
        "dropped",
        "group_ids",
        "id",
        "ip",
        "is_staff",
        "is_superuser",
        "last_sent",
        "max_buffered",
        "paused",
        "pending",
        "permission_ids",
        "position",
        "session_key",
        "topic_ids",
        "user_id",
        "writer",
    )

    def __init__(
        self,
        *,
        writer: Writer,
        close: Callable[[int], Awaitable[None]],
        membership: Membership,
        session_key: str | None = None,
        auth_hash: str | None = None,
        ip: str | None = None,
        max_buffered: int | None = None,
    ) -> None:
        self.id = f"c{next(_ids)}.{_process_tag()}"
        self.writer = writer
        self.close = close
        self.session_key = session_key
        # The session auth hash the socket was opened with (the user's password hash at the
        # time): the session check closes the socket once it no longer matches.
        self.auth_hash = auth_hash
        self.ip = ip
        self.max_buffered = max_buffered
        self.dropped = False
        self.anon_topics: set[int] = set()
        # Object channels (notifications.channels) this socket was authorised to follow.
        self.channels: set[str] = set()
        self.position = 0
        self.last_sent = 0
        self.paused = 0
        # (event id, or None for a control frame such as `unread`; the frame)
        self.pending: list[tuple[int | None, Frame]] = []
        self.apply(membership)

    def apply(self, membership: Membership) -> None:
        self.user_id = membership.user_id
        self.is_staff = membership.is_staff
        self.is_superuser = membership.is_superuser
        self.group_ids = membership.group_ids
        self.topic_ids = membership.topic_ids
        self.permission_ids = membership.permission_ids

    def membership(self) -> Membership:
        return Membership(
            user_id=self.user_id,
            is_staff=self.is_staff,
            is_superuser=self.is_superuser,
            group_ids=self.group_ids,
            topic_ids=self.topic_ids,
            permission_ids=self.permission_ids,
        )

    @property
    def followed_topics(self) -> set[int]:
        return set(self.topic_ids) | self.anon_topics

    async def _write(self, frame: Frame) -> None:
        if self.writer.fast:
            self.write_fast(frame)
        else:
            await self.writer.write(frame)

    def write_fast(self, frame: Frame) -> None:
        """Write with a fast writer (no await), unless the client stopped reading."""
        writer = self.writer
        if self.dropped:
            return
        limit = self.max_buffered
        if limit is not None and (writer.buffered() or 0) > limit:
            # The client stopped reading: drop it rather than buffer without bound. It
            # resumes from its cursor when it reconnects.
            self.dropped = True
            logger.warning(
                "ws.slow %s user=%s: send buffer over %s bytes, dropping",
                self.id,
                self.user_id,
                limit,
            )
            writer.abort()
            return
        writer.write_now(frame)

    async def send_control(self, frame: Frame) -> None:
        """Send a frame that is not an event (``unread``), after any replay in progress."""
        if self.paused:
            self.pending.append((None, frame))
        else:
            await self._write(frame)

    def push(self, frame: Frame) -> bool:
        """Write a transient frame (``push``) without awaiting when possible; False: the
        caller must ``await send_control(frame)``. Transient frames have no id: they are
        neither replayed nor ordered against events."""
        if self.paused or not self.writer.fast:
            return False
        self.write_fast(frame)
        return True

    def offer(self, event_id: int, frame: Frame) -> bool:
        """Handle a live event without awaiting when possible (a fast writer, not paused);
        False: the caller must ``await deliver()``."""
        if event_id <= self.position:
            return True
        if self.paused or not self.writer.fast:
            return False
        self.position = self.last_sent = event_id
        self.write_fast(frame)
        return True

    async def deliver(self, event_id: int, frame: Frame) -> None:
        """Send a live event unless this socket has it already; queue it while paused."""
        if event_id <= self.position:
            return
        if self.paused:
            self.pending.append((event_id, frame))
            return
        self.position = self.last_sent = event_id
        await self._write(frame)

    def pause(self) -> None:
        self.paused += 1

    async def resume(self) -> None:
        """Flush live frames queued during a replay, in order, skipping what was replayed."""
        while self.pending:
            batch, self.pending = self.pending, []
            for event_id, frame in batch:
                if event_id is None:
                    await self._write(frame)
                elif event_id > self.position:
                    self.position = self.last_sent = event_id
                    await self._write(frame)
        self.paused -= 1
