"""The database work of WebSocket handshakes and replays, in batches (``batching.py``).

Handshakes that arrive together (every client reconnects after a deploy) share their reads:
``handshake_batches`` authenticates them and loads their memberships, ``greeting_batches``
counts their ``hello`` figures, ``replay_batches`` reads their replays. The consumer awaits
one item of each; a failure that belongs to one item is that item's alone.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser

from .. import audiences, selectors, services
from ..audiences import Membership
from . import frames
from .auth import authenticate_many
from .batching import Batcher
from .loads import load_replays

Handshake = tuple[Any, Membership, list[int], list[tuple[str, str]]]


def _handshakes(requests: list[tuple[str | None, list[str]]]) -> list[Handshake | Exception]:
    """What handshakes need from the database, for all that arrived together
    (``batching.py``): their users (one query for all the sessions, one for all the users),
    their memberships (one statement on PostgreSQL) and ``?topic=`` subscriptions (a
    handshake's topic error is its own)."""
    authenticated = authenticate_many([key for key, _ in requests])
    users = [AnonymousUser() if isinstance(a, Exception) else a[0] for a in authenticated]
    for user in users:
        if user.is_authenticated:
            # Remembered for the session check: a password change ends the socket.
            user.notifications_auth_hash = user.get_session_auth_hash()
    answers: list[Handshake | Exception] = []
    for (_, slugs), outcome, user, membership in zip(
        requests, authenticated, users, audiences.memberships_of(users), strict=True
    ):
        if isinstance(outcome, Exception):
            answers.append(outcome)  # this handshake alone fails (a session Django cannot read)
            continue
        try:
            answers.append((user, membership, *_subscribe(user, slugs)))
        except Exception as exc:
            answers.append(exc)
    return answers


def _subscribe(user: Any, slugs: list[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """``?topic=`` subscriptions: the topics' ids, and an error per refused slug."""
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


handshake_batches = Batcher(_handshakes)
greeting_batches = Batcher(selectors.greetings)
replay_batches = Batcher(load_replays)
