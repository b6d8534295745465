"""Session authentication of a WebSocket handshake, in one blocking call.

Channels' AuthMiddlewareStack would do the same in several thread hops and keep a session
object and a lazy user in every socket's scope; the handshake rate and the memory of idle
sockets both matter here, so the consumer calls this once, inside its single database hop.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http.cookie import parse_cookie


class _SessionOnly:
    """What ``django.contrib.auth.get_user`` needs of a request."""

    def __init__(self, session: Any) -> None:
        self.session = session


def session_key_from(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    return parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME) or None


def authenticate(session_key: str | None) -> tuple[AbstractBaseUser | AnonymousUser, str | None]:
    """The user a session cookie signs in (verifying the session hash, as Django's
    AuthenticationMiddleware does), and the session key when it does."""
    if not session_key:
        return AnonymousUser(), None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(_SessionOnly(store))
    if not user.is_authenticated:
        return AnonymousUser(), None
    return user, store.session_key
