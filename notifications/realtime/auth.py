"""Session authentication of WebSocket handshakes, one at a time or many in one go.

Channels' AuthMiddlewareStack would do the same in several thread hops and keep a session
object and a lazy user in every socket's scope; the handshake rate and the memory of idle
sockets both matter here, so the consumer calls this inside its own database hop.

:func:`authenticate_many` is :func:`authenticate` for the handshakes that arrive together
(every client reconnects after a deploy): one query for all their sessions and one for all
their users, instead of two each. It takes that path only where it is the same as Django's:
the database session engine and backends whose ``get_user`` is ``ModelBackend``'s. Anything
else (another engine or backend, a session hash that does not verify, which Django answers by
flushing the session or cycling its key) goes through :func:`authenticate`, Django's own
``get_user``, one key at a time. ``tests/test_handshake_batch.py`` compares the two.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.sessions.backends import db as db_sessions
from django.core.exceptions import SuspiciousOperation
from django.http.cookie import parse_cookie
from django.utils import timezone
from django.utils.crypto import constant_time_compare

Authenticated = tuple[AbstractBaseUser | AnonymousUser, str | None]


class _SessionOnly:
    """What ``django.contrib.auth.get_user`` needs of a request."""

    def __init__(self, session: Any) -> None:
        self.session = session


def session_key_from(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    return parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME) or None


def authenticate(session_key: str | None) -> Authenticated:
    """The user a session cookie signs in (verifying the session hash, as Django's
    AuthenticationMiddleware does), and the session key when it does."""
    if not session_key:
        return AnonymousUser(), None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(_SessionOnly(store))
    if not user.is_authenticated:
        return AnonymousUser(), None
    return user, store.session_key


def authenticate_many(session_keys: Sequence[str | None]) -> list[Authenticated | Exception]:
    """:func:`authenticate` for each key, in two queries where Django's behaviour allows.

    Where :func:`authenticate` raises for a key (Django's ``get_user`` on a session it cannot
    read), that key's answer is the exception, so that one handshake fails, not its batch."""
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if not _sessions_batchable(store_class):
        return [_or_exception(key) for key in session_keys]
    stores = {key: store_class(key) for key in session_keys if key}
    # Well-formed keys that a row could have: a key the database cannot store (a NUL byte,
    # too long) matches no session, and in the shared query would fail everyone's handshake.
    longest = store_class.get_model_class()._meta.get_field("session_key").max_length
    valid = {
        key
        for key, store in stores.items()
        if store.session_key and "\x00" not in key and len(key) <= longest
    }
    data = _load_sessions(store_class, valid)
    wanted: dict[str, tuple[Any, Any]] = {}  # session key -> (user id, backend)
    slow: set[str] = set()  # keys that take Django's own path
    user_model = auth.get_user_model()
    for key, session in data.items():
        try:
            user_id = user_model._meta.pk.to_python(session[auth.SESSION_KEY])
            backend_path = session[auth.BACKEND_SESSION_KEY]
        except KeyError:
            continue  # Django: no user in this session
        except Exception:
            slow.add(key)  # let Django raise or answer as it does
            continue
        if backend_path not in settings.AUTHENTICATION_BACKENDS:
            continue  # Django: anonymous
        backend = auth.load_backend(backend_path)
        if type(backend).get_user is not ModelBackend.get_user:
            slow.add(key)
            continue
        wanted[key] = (user_id, backend)
    users = {
        user.pk: user
        for user in user_model._default_manager.filter(
            pk__in={user_id for user_id, _ in wanted.values()}
        )
    }
    found: dict[str, Authenticated] = {}
    for key, (user_id, backend) in wanted.items():
        user = users.get(user_id)
        if user is None or not backend.user_can_authenticate(user):
            continue  # ModelBackend.get_user answers None: anonymous
        session_hash = data[key].get(auth.HASH_SESSION_KEY)
        if session_hash and constant_time_compare(session_hash, user.get_session_auth_hash()):
            found[key] = (user, key)
        else:
            slow.add(key)  # Django flushes the session, or cycles its key (fallback secrets)
    failed: dict[str, Exception] = {}
    for key in slow:
        try:
            found[key] = authenticate(key)
        except Exception as exc:  # that handshake's own failure, as one at a time
            failed[key] = exc
    answers: list[Authenticated | Exception] = []
    handed_out: set[int] = set()
    for key in session_keys:
        if key in failed:
            answers.append(failed[key])
            continue
        user, found_key = (found.get(key) or (None, None)) if key else (None, None)
        if user is None or not user.is_authenticated:
            answers.append((AnonymousUser(), None))
            continue
        if id(user) in handed_out:  # one instance per socket: a user's two sessions, or
            user = copy.copy(user)  # the same session twice
        handed_out.add(id(user))
        answers.append((user, found_key))
    return answers


def _or_exception(key: str | None) -> Authenticated | Exception:
    try:
        return authenticate(key)
    except Exception as exc:
        return exc


def _sessions_batchable(store_class: type) -> bool:
    """Django's database engine, or a subclass that loads sessions the same way."""
    return (
        issubclass(store_class, db_sessions.SessionStore)
        and store_class.load is db_sessions.SessionStore.load
        and store_class._get_session_from_db is db_sessions.SessionStore._get_session_from_db
    )


def _load_sessions(store_class: Any, keys: set[str]) -> dict[str, dict[str, Any]]:
    """Decoded data of the unexpired sessions among ``keys`` (db ``SessionStore.load``)."""
    if not keys:
        return {}
    model = store_class.get_model_class()
    try:
        rows = model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
        pairs = list(rows.values_list("session_key", "session_data"))
    except SuspiciousOperation as exc:  # as _get_session_from_db does
        logging.getLogger(f"django.security.{exc.__class__.__name__}").warning(str(exc))
        return {}
    decoder = store_class()
    return {key: decoder.decode(session_data) for key, session_data in pairs}
