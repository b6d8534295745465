"""The signed-in user's inbox as JSON: ``/api/v1/inbox`` (session auth, CSRF on writes).

The feed in the bell, the SSE fallback's actions and other front ends use it. Reads come from
``selectors`` (visibility is the audience rule, never a query of its own here), writes from
``services``, which also keep every open tab in step (docs/client.md, "JSON API").

Answers are JSON. Errors: ``{"error": {"code", "message", "field"}}`` with 400 (bad input),
401 (not signed in; no redirect to a login page), 405 (wrong method); a write without a valid
CSRF token gets Django's 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from .. import i18n, selectors, services
from ..models import Event
from ..realtime import frames

MAX_IDS = 1000


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def error(status: int, code: str, message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JsonResponse({"error": body}, status=status)


def endpoint(*methods: str) -> Callable:
    """Signed-in users only (401 otherwise), the given methods only (405), never cached; a
    :class:`BadRequest` or ``ValueError`` from the view becomes a 400."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @never_cache
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = error(405, "method_not_allowed", f"use {' or '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            if not request.user.is_authenticated:
                return error(401, "unauthenticated", "sign in to read your inbox")
            try:
                return view(request, *args, **kwargs)
            except BadRequest as exc:
                return error(400, "bad_request", exc.message, exc.field)
            except ValueError as exc:
                field = str(exc).partition(":")[0] if ":" in str(exc) else None
                return error(400, "bad_request", str(exc), field)

        return wrapper

    return decorate


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids(body: dict[str, Any], field: str = "ids") -> list[int]:
    value = body.get(field)
    if (
        not isinstance(value, list)
        or len(value) > MAX_IDS
        or not all(_is_int(v) and 0 <= v <= frames.MAX_ID for v in value)
    ):
        raise BadRequest(f"'{field}' must be a list of at most {MAX_IDS} event ids", field)
    return value


def _ids_or_group(request: HttpRequest, body: dict[str, Any]) -> list[int]:
    """``ids``, or the ids of the user's events in the group ``group_key``."""
    key = body.get("group_key")
    if key is None:
        return _ids(body)
    if not isinstance(key, str) or not 0 < len(key) <= 200:
        raise BadRequest("'group_key' must be a string of 1 to 200 characters", "group_key")
    return selectors.group_event_ids(request.user, key)


def _query_int(request: HttpRequest, name: str, *, default: int | None = None) -> int | None:
    value = request.GET.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 19 or int(value) > frames.MAX_ID:
        raise BadRequest(f"'{name}' must be a non-negative integer", name)
    return int(value)


def _flag(request: HttpRequest, name: str) -> bool:
    value = request.GET.get(name, "")
    if value not in ("", "0", "1", "true", "false"):
        raise BadRequest(f"'{name}' must be 1 or 0", name)
    return value in ("1", "true")


def language_of(request: HttpRequest) -> str | None:
    """The reader's language: the stored preference, else ``Accept-Language``."""
    stored = selectors.preferences_of(request.user).language
    return stored or i18n.socket_language((), request.headers.get("Accept-Language"))


def item(event: Event, *, seen_through: int, language: str | None = None) -> dict[str, Any]:
    """A feed row: the ``notification`` frame's fields (no ``type``/``replay``) plus the
    user's state (``read``, ``seen``, ``archived``), in ``language`` where translated."""
    row = frames.notification(event, read=bool(event.is_read), replay=False, language=language)
    del row["type"], row["replay"]
    row["seen"] = event.id <= seen_through
    row["archived"] = bool(event.is_archived)
    return row


def _counts(user: Any) -> dict[str, Any]:
    return {"unread": selectors.unread_count(user), "unseen": selectors.unseen_count(user)}


@endpoint("GET")
def inbox(request: HttpRequest) -> JsonResponse:
    """``GET /api/v1/inbox?before=&limit=&unread=1&topic=&archived=1``: newest first."""
    topic = request.GET.get("topic") or None
    if topic is not None and not frames.SLUG_RE.match(topic):
        raise BadRequest("'topic' must be a topic slug", "topic")
    group_key = request.GET.get("group_key") or None
    if group_key is not None and len(group_key) > 200:
        raise BadRequest("'group_key' is longer than 200 characters", "group_key")
    group = _flag(request, "group")
    archived = _flag(request, "archived")
    limit = _query_int(request, "limit", default=20)
    assert limit is not None
    if not 1 <= limit <= selectors.FEED_PAGE_MAX:
        raise BadRequest(f"'limit' must be between 1 and {selectors.FEED_PAGE_MAX}", "limit")
    # The cursor first: a client that goes live from it misses nothing listed after it.
    cursor = selectors.stream_cursor()
    page = selectors.feed_page(
        request.user,
        before=_query_int(request, "before"),
        limit=limit,
        unread_only=_flag(request, "unread"),
        topic=topic,
        archived=archived,
        group=group,
        group_key=group_key,
    )
    language = language_of(request)
    items = [
        item(event, seen_through=page.seen_through, language=language) for event in page.events
    ]
    if group:
        summaries = selectors.group_summaries(
            request.user,
            [row["group_key"] for row in items if row.get("group_key")],
            archived=archived,
        )
        for row in items:
            if row.get("group_key"):
                row["group"] = summaries[row["group_key"]]
    return JsonResponse(
        {
            "items": items,
            "next": page.next_before,
            "cursor": cursor,
            "seen_through": page.seen_through,
            **_counts(request.user),
        }
    )


@endpoint("GET")
def count(request: HttpRequest) -> JsonResponse:
    """``GET /api/v1/inbox/count``: ``{"unread": n, "unseen": n}``."""
    return JsonResponse(_counts(request.user))


@endpoint("POST")
def read(request: HttpRequest) -> JsonResponse:
    """``POST /api/v1/inbox/read`` with ``{"ids": [...]}``, ``{"group_key": "..."}`` (the
    whole group) or ``{"all": true}``."""
    body = _body(request)
    if body.get("all") is True:
        unread = services.mark_all_read(request.user)
    else:
        unread = services.mark_read(request.user, _ids_or_group(request, body))
    return JsonResponse({"unread": unread})


@endpoint("POST")
def unread(request: HttpRequest) -> JsonResponse:
    """``POST /api/v1/inbox/unread`` with ``{"ids": [...]}``: mark unread again."""
    return JsonResponse({"unread": services.mark_unread(request.user, _ids(_body(request)))})


@endpoint("POST")
def seen(request: HttpRequest) -> JsonResponse:
    """``POST /api/v1/inbox/seen`` with optional ``{"through": id}`` (default: newest)."""
    body = _body(request)
    through = body.get("through")
    if through is not None and not (_is_int(through) and 0 <= through <= frames.MAX_ID):
        raise BadRequest("'through' must be an event id", "through")
    seen_through = services.mark_seen(request.user, through=through)
    return JsonResponse({"seen_through": seen_through, **_counts(request.user)})


def _archive(request: HttpRequest, *, archived: bool) -> JsonResponse:
    ids = services.archive(request.user, _ids_or_group(request, _body(request)), archived=archived)
    return JsonResponse({"ids": ids, **_counts(request.user)})


@endpoint("POST")
def archive(request: HttpRequest) -> JsonResponse:
    """``POST /api/v1/inbox/archive`` with ``{"ids": [...]}``: out of the feed (and read)."""
    return _archive(request, archived=True)


@endpoint("POST")
def unarchive(request: HttpRequest) -> JsonResponse:
    """``POST /api/v1/inbox/unarchive`` with ``{"ids": [...]}``: back in the feed."""
    return _archive(request, archived=False)


@endpoint("GET")
def topics(request: HttpRequest) -> JsonResponse:
    """``GET /api/v1/inbox/topics``: the topics the user follows (directly or by a group)."""
    return JsonResponse(
        {
            "topics": [
                {"slug": topic.slug, "name": topic.name}
                for topic in selectors.followed_topics(request.user)
            ]
        }
    )


@endpoint("GET", "PUT", "PATCH")
def preferences(request: HttpRequest) -> JsonResponse:
    """``GET``, or ``PUT``/``PATCH`` with any of ``muted_topics`` (slugs), ``toast_levels``
    and ``desktop_levels`` (lists of levels): the stored preferences, effective at once in
    every tab (a ``preferences`` frame)."""
    if request.method == "GET":
        prefs = selectors.preferences_of(request.user)
    else:
        body = _body(request)
        unknown = sorted(set(body) - {"muted_topics", "toast_levels", "desktop_levels", "language"})
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}", unknown[0])
        prefs = services.update_preferences(
            request.user,
            muted_topics=body.get("muted_topics"),
            toast_levels=body.get("toast_levels"),
            desktop_levels=body.get("desktop_levels"),
            language=body.get("language"),
        )
    frame = services.preferences_frame(prefs)
    del frame["type"]
    return JsonResponse(frame)
