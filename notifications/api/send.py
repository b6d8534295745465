"""``POST /api/v1/notifications`` and ``/batch``: other services send notifications (PROTOCOL.md,
"HTTP API"; docs/api.md).

Every request is checked in this order, and the first failure answers: the bearer token (401),
its rate (429), the content type, size and strict JSON of the body (400), the shape of every
field (400), the token's scopes for the audience keys used (403), the names in the audience
(400). Only then is anything stored, through ``services.notify``; a batch is stored in one
transaction, all or nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from .. import services
from ..audiences import Audience
from ..conf import notifications_settings
from ..models import TITLE_MAX_LENGTH, ApiScope, ApiToken, Level, Reach, Topic
from ..realtime.frames import SLUG_RE
from . import strict, tokens

MAX_BATCH = 100
MAX_NAMES = 10_000  # per audience list: one SQL IN-list, within SQLite's and psycopg's limits
MAX_KEY_LENGTH = 150  # stored as "api:<token id>:<key>" in Event.idempotency_key (200)
ITEM_FIELDS = frozenset({"audience", "title", "body", "url", "level", "data", "idempotency_key"})
AUDIENCE_LISTS = ("users", "groups")
AUDIENCE_FLAGS = ("everyone", "authenticated", "staff")  # widest first
OPENAPI_PATH = Path(__file__).with_name("openapi.json")


class ApiError(Exception):
    """An answer other than success: ``status`` with ``{"error": {...}}``."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, **headers: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.index: int | None = None

    def response(self) -> JsonResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.index is not None:
            error["index"] = self.index
        response = JsonResponse({"error": error}, status=self.status)
        for name, value in self.headers.items():
            response[name.replace("_", "-")] = value
        return response


def bad(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(400, code, message, field)


@dataclass
class Draft:
    """One validated notification, ready for ``services.notify``."""

    audience: Audience
    title: str
    body: str = ""
    url: str = ""
    level: str = Level.INFO
    data: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


def _authenticate(request: HttpRequest) -> ApiToken:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    token = tokens.authenticate(raw.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        message = (
            "a valid token is required: Authorization: Bearer <token>"
            if header
            else "the Authorization header is missing"
        )
        raise ApiError(
            401, "unauthorized", message, WWW_Authenticate='Bearer realm="notifications"'
        )
    return token


def _check_rate(token: ApiToken) -> None:
    decision = tokens.hit(token)
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"over this token's limit of {decision.limit} a minute",
            Retry_After=str(decision.retry_after),
        )


def _read_document(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise bad("bad_content_type", "the body must be JSON (Content-Type: application/json)")
    charset = request.content_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise bad("bad_content_type", "the body must be UTF-8")
    limit = notifications_settings.API_MAX_BODY_BYTES
    too_large = bad("too_large", f"the body is larger than {limit} bytes")
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    body = request.read(limit + 1)
    if len(body) > limit:
        raise too_large
    try:
        document = strict.loads(body)
    except strict.StrictJsonError as exc:
        raise bad(exc.code, exc.message, exc.path) from None
    if not isinstance(document, dict):
        raise bad("bad_json", "the body must be a JSON object")
    return document


def _string(value: Any, name: str, *, max_length: int | None = None) -> str:
    if not isinstance(value, str):
        raise bad("invalid", f"{name} must be a string", name)
    if max_length is not None and len(value) > max_length:
        raise bad("invalid", f"{name} is longer than {max_length} characters", name)
    return value


def _optional_string(item: dict[str, Any], name: str) -> str:
    """A string field that may be missing or null (meaning empty)."""
    value = item.get(name)
    return "" if value is None else _string(value, name)


def _names(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad("invalid", f"{name} must be a list of strings", name)
    if len(value) > MAX_NAMES:
        raise bad("invalid", f"{name} may hold at most {MAX_NAMES} names", name)
    return list(dict.fromkeys(value))


def _audience_parts(value: Any) -> dict[str, Any]:
    """The audience keys that name somebody, checked for type (null, false and [] name
    nobody)."""
    if value is None:
        raise bad("required", "audience is required", "audience")
    if not isinstance(value, dict):
        raise bad("invalid", "audience must be an object", "audience")
    unknown = sorted(set(value) - set(ApiScope.values))
    if unknown:
        raise bad("unknown_field", f"unknown audience key {unknown[0]!r}", f"audience.{unknown[0]}")
    parts: dict[str, Any] = {}
    for key in AUDIENCE_LISTS:
        if value.get(key) is not None:
            names = _names(value[key], f"audience.{key}")
            if names:
                parts[key] = names
    for key in AUDIENCE_FLAGS:
        flag = value.get(key)
        if flag is not None and not isinstance(flag, bool):
            raise bad("invalid", f"audience.{key} must be true or false", f"audience.{key}")
        if flag:
            parts[key] = True
    if value.get("topic") is not None:
        slug = _string(value["topic"], "audience.topic")
        if not SLUG_RE.match(slug):
            raise bad("invalid", "audience.topic must be a topic slug", "audience.topic")
        parts["topic"] = slug
    if value.get("permission") is not None:
        permission = _string(value["permission"], "audience.permission", max_length=255)
        if permission.count(".") != 1 or "" in permission.split("."):
            raise bad(
                "invalid", "audience.permission must be 'app_label.codename'", "audience.permission"
            )
        parts["permission"] = permission
    return parts


def _check_scopes(parts: dict[str, Any], token: ApiToken) -> None:
    allowed = tokens.allowed_keys(token)
    for key in parts:
        if key not in allowed:
            raise ApiError(
                403,
                "forbidden",
                f"this token may not use the audience key {key!r}",
                f"audience.{key}",
            )


def _resolve(parts: dict[str, Any]) -> Audience:
    """The :class:`Audience` for checked parts; 400 ``not_found`` for names that name nothing."""
    if not parts:
        raise bad("empty_audience", "the audience names nobody", "audience")
    kwargs: dict[str, Any] = {}
    if "users" in parts:
        user_model = get_user_model()
        lookup = f"{user_model.USERNAME_FIELD}__in"
        found = dict(
            user_model._default_manager.filter(**{lookup: parts["users"]}).values_list(
                user_model.USERNAME_FIELD, "pk"
            )
        )
        missing = [name for name in parts["users"] if name not in found]
        if missing:
            raise bad("not_found", f"unknown user(s): {', '.join(missing)}", "audience.users")
        kwargs["users"] = found.values()
    if "groups" in parts:
        found = dict(Group.objects.filter(name__in=parts["groups"]).values_list("name", "pk"))
        missing = [name for name in parts["groups"] if name not in found]
        if missing:
            raise bad("not_found", f"unknown group(s): {', '.join(missing)}", "audience.groups")
        kwargs["groups"] = found.values()
    if "topic" in parts:
        topic = Topic.objects.filter(slug=parts["topic"]).first()
        if topic is None:
            raise bad("not_found", f"unknown topic {parts['topic']!r}", "audience.topic")
        kwargs["topic"] = topic
    for key in AUDIENCE_FLAGS:  # several reach flags: the widest wins (each includes the next)
        if key in parts:
            kwargs["reach"] = Reach(key)
            break
    if "permission" in parts:
        try:
            return Audience(**kwargs, permission=parts["permission"])
        except ValueError:
            raise bad(
                "not_found", f"unknown permission {parts['permission']!r}", "audience.permission"
            ) from None
    return Audience(**kwargs)


def _draft(item: Any, token: ApiToken) -> Draft:
    """Validate one notification body (all of it) and resolve its audience."""
    if not isinstance(item, dict):
        raise bad("invalid", "a notification must be a JSON object")
    unknown = sorted(set(item) - ITEM_FIELDS)
    if unknown:
        raise bad("unknown_field", f"unknown field {unknown[0]!r}", unknown[0])
    if item.get("title") is None:
        raise bad("required", "title is required", "title")
    title = _string(item["title"], "title", max_length=TITLE_MAX_LENGTH)
    if not title.strip():
        raise bad("invalid", "title must not be blank", "title")
    body = _optional_string(item, "body")
    url = _optional_string(item, "url")
    try:
        services.validate_url(url)
    except ValueError as exc:
        raise bad("invalid", str(exc), "url") from None
    level = item.get("level")
    if level is None:
        level = Level.INFO
    if level not in Level.values:
        raise bad("invalid", f"level must be one of {', '.join(Level.values)}", "level")
    data = item.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise bad("invalid", "data must be an object", "data")
    key = item.get("idempotency_key")
    if key is not None:
        key = _string(key, "idempotency_key", max_length=MAX_KEY_LENGTH)
        if not key:
            raise bad("invalid", "idempotency_key must not be empty", "idempotency_key")
        key = f"api:{token.pk}:{key}"  # one token cannot read another's events by their keys
    parts = _audience_parts(item.get("audience"))
    _check_scopes(parts, token)
    return Draft(
        audience=_resolve(parts),
        title=title,
        body=body,
        url=url,
        level=level,
        data=data,
        idempotency_key=key,
    )


def _send(draft: Draft) -> tuple[dict[str, int], bool]:
    """Store and publish one draft; the answer and whether it was a repeated key."""
    try:
        event = services.notify(
            draft.audience,
            draft.title,
            body=draft.body,
            url=draft.url,
            level=draft.level,
            data=draft.data,
            idempotency_key=draft.idempotency_key,
        )
    except ValueError as exc:  # what changed since the checks (a group deleted meanwhile)
        raise bad("invalid", str(exc)) from None
    return {"id": event.id, "recipients": event.recipient_count}, event.repeated


def _guarded(handler: Any) -> Any:
    """Authenticate and rate-limit, then run ``handler(request, token)``; errors become their
    JSON answers."""

    @csrf_exempt
    @never_cache
    @require_POST
    def view(request: HttpRequest) -> HttpResponse:
        try:
            token = _authenticate(request)
            _check_rate(token)
            return handler(request, token)
        except ApiError as error:
            return error.response()

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


@_guarded
def send_notification(request: HttpRequest, token: ApiToken) -> HttpResponse:
    """One notification: 201 with ``{"id", "recipients"}``; 200 with the first answer for a
    repeated idempotency key."""
    draft = _draft(_read_document(request), token)
    answer, repeated = _send(draft)
    return JsonResponse(answer, status=200 if repeated else 201)


def _locate_in_batch(error: ApiError) -> None:
    """Turn a path such as ``notifications.3.data.x`` into index 3 and field ``data.x``."""
    match = _ITEM_PATH.match(error.field or "")
    if match:
        error.index = int(match["index"])
        error.field = match["field"]


_ITEM_PATH = re.compile(r"notifications\.(?P<index>\d+)(?:\.(?P<field>.+))?\Z")


@_guarded
def send_batch(request: HttpRequest, token: ApiToken) -> HttpResponse:
    """Up to 100 notifications, stored in one transaction: 201 with ``{"results": [...]}``, or
    the first bad item's error (with its ``index``) and nothing stored."""
    try:
        document = _read_document(request)
    except ApiError as error:
        _locate_in_batch(error)
        raise
    unknown = sorted(set(document) - {"notifications"})
    if unknown:
        raise bad("unknown_field", f"unknown field {unknown[0]!r}", unknown[0])
    items = document.get("notifications")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise bad(
            "invalid",
            f"notifications must be a list of 1 to {MAX_BATCH} notifications",
            "notifications",
        )
    drafts = []
    for index, item in enumerate(items):
        try:
            drafts.append(_draft(item, token))
        except ApiError as error:
            error.index = index
            raise
    results = []
    with transaction.atomic():
        for index, draft in enumerate(drafts):
            try:
                results.append(_send(draft)[0])
            except ApiError as error:
                error.index = index
                raise
    return JsonResponse({"results": results}, status=201)


@require_safe
def openapi(request: HttpRequest) -> HttpResponse:
    """The OpenAPI 3.1 document of the sending API."""
    return HttpResponse(OPENAPI_PATH.read_bytes(), content_type="application/json")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as a dict (tests, docs)."""
    return json.loads(OPENAPI_PATH.read_text())
