"""Template tags that put the live client on a page: ``{% load notifications %}``.

``{% notifications_client %}`` (once per page, in ``<head>``) renders the stylesheet, the
config the client starts from and the ES module. ``{% notifications_bell %}`` renders a link to
the inbox with the unread badge and the connection state indicator, which the client updates.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.contrib.auth.models import AnonymousUser
from django.middleware.csrf import get_token
from django.urls import reverse

from ..selectors import preferences_of, stream_cursor, unread_count, unseen_count
from ..services import preferences_frame

register = template.Library()

# Context variables a view may set: the stream cursor it took before reading its own rows
# (see notifications.views.inbox) and the unread count it has already computed. Otherwise
# the tags query them themselves.
CURSOR_CONTEXT_KEY = "notifications_cursor"
UNREAD_CONTEXT_KEY = "notifications_unread"
_REQUEST_CACHE = "_notifications_page_state"


def _page_state(context: template.Context) -> dict[str, Any]:
    """Cursor, unread count and username for this page, computed once per request.

    Both tags share it, so the badge and the client start from the same numbers.
    """
    request = context.get("request")
    cached = getattr(request, _REQUEST_CACHE, None)
    if cached is not None:
        return cached
    user = getattr(request, "user", None) or context.get("user") or AnonymousUser()
    cursor = context.get(CURSOR_CONTEXT_KEY)
    unread = context.get(UNREAD_CONTEXT_KEY)
    state = {
        # The cursor first: an event committed after it is replayed when the socket opens,
        # so nothing falls between the rendered page and the live stream.
        "cursor": stream_cursor() if cursor is None else cursor,
        "unread": unread_count(user) if unread is None else unread,
        "user": user.get_username() if user.is_authenticated else None,
        "inbox": reverse("notifications:inbox") if user.is_authenticated else None,
    }
    if user.is_authenticated:
        # What the feed and the toasts start from (docs/client.md): the new-items count and
        # the stored preferences; the CSRF token for the JSON inbox API's writes.
        prefs = preferences_frame(preferences_of(user))
        del prefs["type"]
        state.update(
            unseen=unseen_count(user),
            preferences=prefs,
            language=prefs["language"] or None,
            preferences_url=reverse("notifications:preferences"),
            csrf=get_token(request) if request is not None else None,
        )
    if request is not None:
        setattr(request, _REQUEST_CACHE, state)
    return state


@register.inclusion_tag("notifications/client.html", takes_context=True)
def notifications_client(context: template.Context) -> dict[str, Any]:
    """The stylesheet, the ``notifications-config`` JSON and the client module."""
    state = _page_state(context)
    return {
        "config": {
            "url": None,  # the client derives ws(s)://<this host>/ws/notifications/
            "cursor": state["cursor"],
            "unread": state["unread"],
            "user": state["user"],
            "inbox": state["inbox"],
            "sse": reverse("notifications:stream"),
            **{
                key: state[key]
                for key in ("unseen", "preferences", "preferences_url", "csrf", "language")
                if key in state
            },
        }
    }


@register.inclusion_tag("notifications/bell.html", takes_context=True)
def notifications_bell(context: template.Context) -> dict[str, Any]:
    """A link to the inbox with the server-side unread badge and the connection state."""
    state = _page_state(context)
    return {"unread": state["unread"], "inbox_url": reverse("notifications:inbox")}
