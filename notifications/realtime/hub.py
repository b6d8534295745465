"""The per-process fan-out hub.

Each server process runs one hub. It holds one channel-layer channel (in ``HUB_GROUP``), so
an event costs one layer message per process, and writes the event's pre-encoded frame to
each local socket whose audience matches, using in-memory indexes (by user, group, topic).

It also owns stream order. ``horizon`` is the highest event id such that every committed
event up to it has been fanned out here. Events are fanned out strictly in id order: one that
arrives early waits in ``_buffer`` until the ids below it are settled, either by their own
layer messages or by asking the database (ids commit in order, see services._lock_stream, so
once id N is committed every lower id is committed or gone for good). A poll of the database
every ``POLL_INTERVAL`` picks up events the layer never brought: sent by another process with
no shared layer (``manage.py notify`` under the in-memory layer) or dropped by the layer.

The hub is async only: its database reads (the poll, replays, the session and channel
checks) are in loads.py and run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import AnonymousUser

from .. import metrics, selectors
from ..conf import notifications_settings
from ..models import Reach
from . import drain, frames, messages, scheduler
from .connection import Connection
from .gcpolicy import GcPolicy
from .loads import (
    CHANGE_WINDOW,
    _authorised_channels,
    _load_event_messages,
    _load_poll,
    _local_recipients,
    _memberships,
    _session_hash,
    _session_states,
    load_replay,
)
from .transport import Frame

logger = logging.getLogger(__name__)

CLOSE_POLICY = 1008
GROUP_RENEW_SECONDS = 60.0
SESSION_CHECK_SLICES = 10
# Public replays shared between sockets: kept this long after they are read, at most this many.
PUBLIC_REPLAY_SECONDS = 5.0
PUBLIC_REPLAY_ENTRIES = 32


def _frame_for(by_language: dict[str, Frame], language: str | None, default: Frame) -> Frame:
    if not language:
        return default
    return by_language.get(language) or by_language.get(language.split("-")[0]) or default


class Hub:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.horizon = 0
        # The newest event to everyone fanned out here: an anonymous socket's hello.cursor.
        self.newest_public = 0
        self.connections: set[Connection] = set()
        self.authenticated: set[Connection] = set()
        self.staff: set[Connection] = set()
        self.superusers: set[Connection] = set()
        self.by_user: dict[int, set[Connection]] = defaultdict(set)
        self.by_group: dict[int, set[Connection]] = defaultdict(set)
        self.by_topic: dict[int, set[Connection]] = defaultdict(set)
        self.by_permission: dict[int, set[Connection]] = defaultdict(set)
        self.by_channel: dict[str, set[Connection]] = defaultdict(set)
        self.by_ip: dict[str, int] = defaultdict(int)
        self._buffer: dict[int, dict[str, Any]] = {}
        self._seen_changes: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self._gap_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._ready: asyncio.Task | None = None
        self._layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
        self._channel: str | None = None
        self._gc: GcPolicy | None = None
        self._public_replays: dict[tuple[int, int, int, str | None], asyncio.Future] = {}

    # Life cycle -----------------------------------------------------------------------------

    async def ready(self) -> None:
        """Start on first use; concurrent callers share one start."""
        failed = (
            self._ready is not None
            and self._ready.done()
            and (self._ready.cancelled() or self._ready.exception() is not None)
        )
        if self._ready is None or failed:
            # A start that failed (database down at the first socket) is tried again by
            # the next socket instead of refusing every handshake until a restart.
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        self.horizon, self.newest_public = await database_sync_to_async(selectors.stream_heads)()
        if self._layer is not None:
            # The channel is made by the listener: with the pub/sub layer that already needs
            # Redis, and Redis being down must not refuse sockets (the poll covers).
            self._tasks.append(asyncio.ensure_future(self._listen()))
            self._tasks.append(asyncio.ensure_future(self._renew_group_forever()))
        self._tasks.append(asyncio.ensure_future(self._poll_forever()))
        self._tasks.append(asyncio.ensure_future(self._check_sessions_forever()))
        self._tasks.extend(scheduler.start(self))  # broadcast sender, presence reports
        if notifications_settings.GC_FREEZE_INTERVAL is not None:
            self._gc = GcPolicy(
                notifications_settings.GC_FREEZE_INTERVAL,
                notifications_settings.GC_FULL_COLLECT_INTERVAL,
            )
            self._tasks.append(asyncio.ensure_future(self._gc.run()))
        drain.install()  # after the server's own SIGTERM handler (realtime/drain.py)
        logger.info("hub started at cursor %s", self.horizon)

    async def _join_group(self) -> None:
        if self._layer is not None and self._channel is not None:
            await self._layer.group_add(messages.HUB_GROUP, self._channel)

    async def stop(self) -> None:
        for task in [*self._tasks, self._gap_task]:
            if task is not None:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._gc is not None:
            self._gc.release()
            self._gc = None
        if self._layer is not None and self._channel is not None:
            with contextlib.suppress(Exception):
                await self._layer.group_discard(messages.HUB_GROUP, self._channel)

    # Connections ----------------------------------------------------------------------------

    def admit(self, user_id: int | None, ip: str | None) -> str | None:
        """Why a new socket must be refused (a connection cap), or None."""
        per_user = notifications_settings.MAX_CONNECTIONS_PER_USER
        if (
            user_id is not None
            and per_user is not None
            and len(self.by_user.get(user_id, ())) >= per_user
        ):
            return f"more than {per_user} connections for this user"
        per_ip = notifications_settings.MAX_CONNECTIONS_PER_IP
        if ip and per_ip is not None and self.by_ip.get(ip, 0) >= per_ip:
            return f"more than {per_ip} connections from {ip}"
        return None

    def attach(self, conn: Connection) -> int:
        """Index a socket and return the cursor it starts from (the current horizon)."""
        self.connections.add(conn)
        self._index(conn)
        if conn.ip:
            self.by_ip[conn.ip] += 1
        conn.position = self.horizon
        return self.horizon

    def detach(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self._unindex(conn)
        if conn.ip:
            self.by_ip[conn.ip] -= 1
            if self.by_ip[conn.ip] <= 0:
                del self.by_ip[conn.ip]

    def follow(self, conn: Connection, topic_id: int, *, stored: bool) -> None:
        if stored:
            conn.topic_ids = conn.topic_ids | {topic_id}
        else:
            conn.anon_topics.add(topic_id)
        self.by_topic[topic_id].add(conn)

    def follow_channel(self, conn: Connection, name: str) -> None:
        conn.channels.add(name)
        self.by_channel[name].add(conn)

    def unfollow_channel(self, conn: Connection, name: str) -> None:
        conn.channels.discard(name)
        _discard(self.by_channel, name, conn)

    def unfollow(self, conn: Connection, topic_id: int) -> None:
        conn.anon_topics.discard(topic_id)
        conn.topic_ids = conn.topic_ids - {topic_id}
        if topic_id not in conn.followed_topics:
            _discard(self.by_topic, topic_id, conn)

    def _index(self, conn: Connection) -> None:
        if conn.user_id is not None:
            self.authenticated.add(conn)
            self.by_user[conn.user_id].add(conn)
            if conn.is_staff:
                self.staff.add(conn)
            if conn.is_superuser:
                self.superusers.add(conn)
        for group_id in conn.group_ids:
            self.by_group[group_id].add(conn)
        for topic_id in conn.followed_topics:
            self.by_topic[topic_id].add(conn)
        for permission_id in conn.permission_ids:
            self.by_permission[permission_id].add(conn)
        for name in conn.channels:
            self.by_channel[name].add(conn)

    def _unindex(self, conn: Connection) -> None:
        self.authenticated.discard(conn)
        self.staff.discard(conn)
        self.superusers.discard(conn)
        if conn.user_id is not None:
            _discard(self.by_user, conn.user_id, conn)
        for group_id in conn.group_ids:
            _discard(self.by_group, group_id, conn)
        for topic_id in conn.followed_topics:
            _discard(self.by_topic, topic_id, conn)
        for permission_id in conn.permission_ids:
            _discard(self.by_permission, permission_id, conn)
        for name in conn.channels:
            _discard(self.by_channel, name, conn)

    async def public_replay(
        self, *, after: int, upto: int, limit: int, language: str | None = None
    ) -> list[tuple[int, str, bool]]:
        """:func:`load_replay` for an anonymous socket without topics (announcements to
        everyone only), read once for all the sockets that ask for the same range at about
        the same time (every client resuming after a restart or a network blip asks for the
        same one). A sent event does not change, so sharing is exact."""
        key = (after, upto, limit, language)
        shared = self._public_replays.get(key)
        if shared is None:
            read = database_sync_to_async(load_replay)(
                AnonymousUser(), after=after, upto=upto, limit=limit, language=language
            )
            if len(self._public_replays) >= PUBLIC_REPLAY_ENTRIES:
                return await read
            shared = asyncio.ensure_future(read)
            self._public_replays[key] = shared

            def expire(future: asyncio.Future) -> None:
                # A failed read (database down) is not kept: the next socket tries again.
                failed = future.cancelled() or future.exception() is not None
                delay = 0 if failed else PUBLIC_REPLAY_SECONDS
                self.loop.call_later(delay, self._public_replays.pop, key, None)

            shared.add_done_callback(expire)
        return await asyncio.shield(shared)

    # Incoming layer messages ------------------------------------------------------------------

    async def _renew_group_forever(self) -> None:
        # channels_redis.core forgets group members after its group_expiry (300 s in the
        # project's settings), which also clears the channels of processes that died without
        # leaving; with the pub/sub layer a renewal is a no-op subscribe.
        while True:
            await asyncio.sleep(GROUP_RENEW_SECONDS)
            try:
                await self._join_group()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not renew the hub's group membership; retrying")

    async def _listen(self) -> None:
        assert self._layer is not None
        while True:  # join first; the layer may be down at start (the poll covers meanwhile)
            try:
                if self._channel is None:
                    self._channel = await self._layer.new_channel(messages.PROCESS_CHANNEL_PREFIX)
                await self._join_group()
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("channel layer unavailable at start; retrying in 1 s")
                await asyncio.sleep(1)
        while True:
            try:
                assert self._channel is not None
                message = await self._layer.receive(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A layer outage (Redis restart): the poll keeps delivering from the
                # database meanwhile; rejoin the group, which the restart may have lost.
                logger.exception("channel layer receive failed; retrying in 1 s")
                await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    await self._join_group()
                continue
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception("hub failed to handle %s", message.get("type"))

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == messages.EVENT:
            async with self._lock:
                await self._accept([message])
        elif kind == messages.EVENTS:
            async with self._lock:
                await self._accept(message["events"])
        elif kind == messages.PUSH:
            await self._push(message)
        elif kind == messages.UNREAD:
            await self._send_unread(message["user"], message["count"], message.get("exclude"))
        elif kind == messages.MEMBERSHIP:
            await self._reload_members(message["users"])
        elif kind == messages.SESSION_ENDED:
            await self._close_sessions(set(message["sessions"]))
        elif kind == messages.USER_FRAME:
            await self._send_to_user(
                message["user"], message["frame"], message.get("exclude"), message["ext"]
            )
        elif kind == messages.TOPIC_ACCESS:
            self._topic_access(message["topic"], message["public"])

    def _topic_access(self, topic_id: int, is_public: bool) -> None:
        """A topic became private: anonymous sockets stop following it (signed-in followers
        are reloaded from their grants by a membership message)."""
        if is_public:
            return
        for conn in list(self.by_topic.get(topic_id, ())):
            if conn.user_id is None:
                self.unfollow(conn, topic_id)

    # Ordered fan-out ---------------------------------------------------------------------------

    async def _accept(self, event_messages: Iterable[dict[str, Any]]) -> None:
        """Buffer events (any order) and fan out every one that is next in line. Hold _lock."""
        for message in event_messages:
            if message["id"] > self.horizon:
                self._buffer.setdefault(message["id"], message)
        while self.horizon + 1 in self._buffer:
            message = self._buffer.pop(self.horizon + 1)
            self.horizon = message["id"]
            await self._fan_out(message)
        if self._buffer and (self._gap_task is None or self._gap_task.done()):
            self._gap_task = asyncio.ensure_future(self._settle_gap())

    async def _settle(self, rows: list[dict[str, Any]], top: int) -> None:
        """Every committed id up to ``top`` is known (in ``rows`` or the buffer): fan out in
        order, skip ids that never committed. Hold _lock."""
        for message in rows:
            if message["id"] > self.horizon:
                self._buffer.setdefault(message["id"], message)
        for event_id in sorted(i for i in self._buffer if i <= top):
            message = self._buffer.pop(event_id)
            if event_id > self.horizon:
                self.horizon = event_id
                await self._fan_out(message)
        self.horizon = max(self.horizon, top)
        await self._accept(())

    async def _settle_gap(self) -> None:
        await asyncio.sleep(notifications_settings.GAP_WAIT)
        self._gap_task = None  # from here on a new gap may schedule its own settle
        if not self._buffer:
            return
        after, top = self.horizon, max(self._buffer)
        try:
            rows = await database_sync_to_async(_load_event_messages)(after=after, upto=top)
        except Exception:
            logger.exception("settling a gap failed; the next poll retries")
            return
        async with self._lock:
            await self._settle(rows, top)

    async def poll(self) -> None:
        """Read committed events above the horizon from the database and fan them out, after
        applying the membership changes the layer did not bring."""
        rows, changes = await database_sync_to_async(_load_poll)(
            after=self.horizon, with_changes=bool(self.by_user)
        )
        await self._apply_membership_changes(changes)
        if rows:
            async with self._lock:
                await self._settle(rows, rows[-1]["id"])

    async def _apply_membership_changes(self, changes: list[tuple[int, int]]) -> None:
        # A time window, not an id cursor: change ids may commit out of order. Reloading is
        # idempotent; _seen_changes keeps one change from being applied once per poll.
        now = time.monotonic()
        users = {uid for cid, uid in changes if cid not in self._seen_changes}
        for change_id, _ in changes:
            self._seen_changes.setdefault(change_id, now)
        for change_id in [
            c for c, seen in self._seen_changes.items() if now - seen > 2 * CHANGE_WINDOW
        ]:
            del self._seen_changes[change_id]
        if users:
            await self._reload_members(sorted(users))

    async def _poll_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(notifications_settings.POLL_INTERVAL)
            try:
                await self.poll()
                ticks += 1
                if ticks % 600 == 0:
                    await database_sync_to_async(selectors.prune_membership_changes)(
                        older_than=10 * CHANGE_WINDOW
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub poll failed")

    def _targets(self, message: dict[str, Any], users: Iterable[int]) -> Iterable[Connection]:
        """The local sockets that receive an event: audiences.matches, with indexes
        (tests/test_hub_rule.py checks that the two agree)."""
        reach = message["reach"]
        if reach == Reach.EVERYONE:
            return list(self.connections)
        parts: list[set[Connection]] = []
        if reach == Reach.AUTHENTICATED:
            parts.append(self.authenticated)
        elif reach == Reach.STAFF:
            parts.append(self.staff)
        for user_id in users:
            if user_id in self.by_user:
                parts.append(self.by_user[user_id])
        for group_id in message["groups"]:
            if group_id in self.by_group:
                parts.append(self.by_group[group_id])
        topic_id = message["topic"]
        if topic_id is not None and topic_id in self.by_topic:
            parts.append(self.by_topic[topic_id])
        permission_id = message.get("permission")
        if permission_id is not None:
            parts.append(self.superusers)
            if permission_id in self.by_permission:
                parts.append(self.by_permission[permission_id])
        channel = message.get("channel")
        if channel is not None and channel in self.by_channel:
            parts.append(self.by_channel[channel])
        if not parts:
            return ()
        if len(parts) == 1:
            return list(parts[0])
        return set().union(*parts)

    async def _fan_out(self, message: dict[str, Any]) -> None:
        users = message["users"]
        if users is None:  # too many to carry: which of them are connected here?
            users = (
                await database_sync_to_async(_local_recipients)(message["id"], list(self.by_user))
                if self.by_user
                else ()
            )
        if message["frame"] is None:
            return  # an event that cannot be encoded (_message_of)
        event_id, frame = message["id"], Frame(message["frame"])
        expires = message.get("expires")
        if expires is not None and expires <= time.time():
            return  # expired before it could go out (a late scheduled send, a slow layer)
        if message["reach"] == Reach.EVERYONE:
            self.newest_public = event_id
        translated = message.get("translated")
        # Each language's frame was encoded once, by the sender (notifications/i18n.py).
        by_language = (
            {code: Frame(text) for code, text in translated.items()} if translated else None
        )
        targets = self._targets(message, users)
        for conn in targets:
            chosen = frame if by_language is None else _frame_for(by_language, conn.language, frame)
            try:
                # The hot path writes at once; only a paused or ASGI-only socket is awaited.
                if not conn.offer(event_id, chosen):
                    await conn.deliver(event_id, chosen)
            except Exception:
                logger.exception("delivery to %s failed", conn.id)
        metrics.fanned_out(len(targets), message.get("committed_at"))  # once per event
        if message.get("track"):  # a broadcast: its follow-up counts live deliveries
            scheduler.count_delivery(event_id, list(targets))

    async def _push(self, message: dict[str, Any]) -> None:
        """Fan out a transient frame at once: no buffer, no horizon (it has no id)."""
        frame, exclude = Frame(message["frame"]), message["exclude"]
        targets, skipped = self._targets(message, message["users"]), 0
        for conn in targets:
            if conn.id == exclude:
                skipped = 1
                continue
            try:
                if not conn.push(frame):
                    await conn.send_control(frame)
            except Exception:
                logger.exception("push to %s failed", conn.id)
        metrics.PUSHES.inc(len(targets) - skipped)  # once per push, never per socket

    # Control messages -------------------------------------------------------------------------

    async def _send_unread(self, user_id: int, count: int, exclude: str | None) -> None:
        frame = Frame(frames.encode({"type": "unread", "count": count}))
        for conn in list(self.by_user.get(user_id, ())):
            if conn.id != exclude:
                await conn.send_control(frame)

    async def _send_to_user(
        self, user_id: int, text: str, exclude: str | None, extension: str
    ) -> None:
        """A control frame of a protocol extension (inbox state, preferences) for one user's
        sockets in this process that asked for that extension."""
        frame = Frame(text)
        for conn in list(self.by_user.get(user_id, ())):
            if conn.id != exclude and extension in conn.extensions:
                await conn.send_control(frame)

    async def _reload_members(self, user_ids: list[int]) -> None:
        local = [uid for uid in user_ids if uid in self.by_user]
        if not local:
            return
        users = await database_sync_to_async(_memberships)(local)
        for user_id in local:
            for conn in list(self.by_user.get(user_id, ())):
                if user_id not in users:  # deactivated or deleted
                    await self._close(conn, CLOSE_POLICY)
                    continue
                membership, unread = users[user_id]
                # Topics followed for this connection only (anonymous ones) are kept apart.
                if conn.membership() == membership:
                    continue
                self._unindex(conn)
                conn.apply(membership)
                self._index(conn)
                # What the user may see changed, and the unread count with it; the client
                # cannot know, so tell it (PROTOCOL.md, `unread`).
                await conn.send_control(Frame(frames.encode({"type": "unread", "count": unread})))

    async def _close(self, conn: Connection, code: int) -> None:
        """Close one socket; a failure there must not spare the others."""
        try:
            await conn.close(code)
        except Exception:
            logger.exception("closing %s failed", conn.id)

    async def _close_sessions(self, session_keys: set[str]) -> None:
        for conn in [c for c in self.authenticated if c.session_key in session_keys]:
            await self._close(conn, CLOSE_POLICY)

    async def check_sessions(self, conns: list[Connection] | None = None) -> None:
        """Re-read what grants each signed-in socket its access: close it (1008) when its
        session ended, its user was deactivated or deleted, or the password changed (the
        session auth hash); reload its membership when staff or superuser status changed.
        Changes made with ``QuerySet.update()`` send no signal: this is what finds them."""
        conns = list(self.authenticated) if conns is None else conns
        if not conns:
            return
        pairs = list({(conn.session_key, conn.user_id) for conn in conns})
        users, live = await database_sync_to_async(_session_states)(pairs)
        reload: set[int] = set()
        for conn in conns:
            state = users.get(conn.user_id)
            reason = None
            if state is None:
                reason = "user inactive or deleted"
            elif conn.session_key and conn.session_key not in live:
                reason = "session ended"
            elif conn.auth_hash is not None and state.auth_hash != conn.auth_hash:
                renewed = conn.session_key and await database_sync_to_async(_session_hash)(
                    conn.session_key
                )
                if renewed == state.auth_hash:  # this session changed the password itself
                    conn.auth_hash = state.auth_hash
                else:
                    reason = "password changed"
            if reason is not None:
                logger.info("closing %s: %s", conn.id, reason)
                await self._close(conn, CLOSE_POLICY)
            elif (state.is_staff, state.is_superuser) != (conn.is_staff, conn.is_superuser):
                reload.add(conn.user_id)
        if reload:
            await self._reload_members(sorted(reload))

    async def recheck_channels(self) -> None:
        """Ask the authorisation functions again for every followed object channel; a socket
        that lost the right stops following it and gets ``unsubscribed`` with ``reason``."""
        followed = [(conn, name) for name, conns in self.by_channel.items() for conn in conns]
        if not followed:
            return
        pairs = sorted({(conn.user_id, name) for conn, name in followed}, key=repr)
        allowed = await database_sync_to_async(_authorised_channels)(pairs)
        for conn, name in followed:
            if (conn.user_id, name) not in allowed and name in conn.channels:
                self.unfollow_channel(conn, name)
                frame = {"type": "unsubscribed", "topic": name, "reason": "forbidden"}
                await conn.send_control(Frame(frames.encode(frame)))

    async def _check_sessions_forever(self) -> None:
        # Every socket is checked once per SESSION_CHECK_INTERVAL, a slice at a time: one
        # check of 10,000 sessions at once held the event loop (through the GIL) for long
        # enough to show in delivery latency.
        queue: list[Connection] = []
        while True:
            interval = notifications_settings.SESSION_CHECK_INTERVAL
            tick = interval / SESSION_CHECK_SLICES
            await asyncio.sleep(tick)
            try:
                if not queue:
                    await self.recheck_channels()  # once per interval, like the sessions
                    queue = list(self.authenticated)
                    per_tick = max(1, -(-len(queue) // SESSION_CHECK_SLICES))
                batch, queue = queue[:per_tick], queue[per_tick:]
                await self.check_sessions([c for c in batch if c in self.authenticated])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("session check failed")


def _discard(index: dict[int, set[Connection]], key: int, conn: Connection) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(conn)
        if not members:
            del index[key]


_hub: Hub | None = None


def get_hub() -> Hub:
    """The hub of the running event loop (one per server process)."""
    global _hub
    loop = asyncio.get_running_loop()
    if _hub is None or _hub.loop is not loop:
        _hub = Hub()
    return _hub


async def reset_hub() -> None:
    """Stop and forget the current hub (tests)."""
    global _hub
    if _hub is not None:
        hub, _hub = _hub, None
        if hub.loop is asyncio.get_running_loop():
            await hub.stop()
