"""JSON frames of the WebSocket protocol (PROTOCOL.md): encoding and client-frame parsing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType

from ..models import Event

PROTOCOL_VERSION = 1
SUBPROTOCOL = "notifications.v1"
SLUG_RE = re.compile(r"[-a-zA-Z0-9_]{1,50}\Z")
MAX_ID = 2**63 - 1  # event ids and cursors are 64-bit database integers

# allow_nan=False: NaN and Infinity are not JSON, and a browser's JSON.parse refuses them.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class Unencodable(ValueError):
    """A frame that cannot be sent: not strict JSON, or not valid Unicode text (a lone
    surrogate, which the transport could not encode as UTF-8)."""


def encode(frame: dict[str, Any]) -> str:
    """The frame as compact JSON text that is valid UTF-8; :class:`Unencodable` otherwise."""
    try:
        text = _dumps(frame)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Unencodable(f"not strict JSON: {exc}") from None
    if not text.isascii():  # ensure_ascii=False leaves lone surrogates for the transport
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Unencodable("not valid Unicode text (a lone surrogate)") from None
    return text


def notification(event: Event, *, read: bool, replay: bool) -> dict[str, Any]:
    frame = {
        "type": "notification",
        "id": event.id,
        "title": event.title,
        "body": event.body,
        "url": event.url,
        "level": event.level,
        "topic": event.topic.slug if event.topic_id else None,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
        "read": read,
        "replay": replay,
    }
    if event.target_content_type_id is not None:
        # Extension (docs/protocol.md): what the notification is about. get_for_id is cached
        # per process, so replays pay no query for it.
        target_type = ContentType.objects.get_for_id(event.target_content_type_id)
        label = f"{target_type.app_label}.{target_type.model}"
        frame["target"] = {"type": label, "id": event.target_object_id}
    return frame


def with_ref(frame: dict[str, Any], ref: str | int | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


def error(code: str, message: str, ref: str | int | None = None) -> dict[str, Any]:
    return with_ref({"type": "error", "code": code, "message": message}, ref)


class FrameError(Exception):
    """A client frame that cannot be used; becomes an ``error`` frame."""

    def __init__(self, code: str, message: str, ref: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def frame(self) -> dict[str, Any]:
        return error(self.code, self.message, self.ref)


@dataclass(frozen=True)
class ClientFrame:
    type: str
    ref: str | int | None
    body: dict[str, Any]

    def cursor(self, key: str = "cursor", *, required: bool = True) -> int | None:
        value = self.body.get(key)
        if value is None and not required:
            return None
        if not _is_int(value) or not 0 <= value <= MAX_ID:
            raise FrameError("bad_request", f"'{key}' must be a non-negative integer", self.ref)
        return value

    def slug(self, key: str = "topic") -> str:
        value = self.body.get(key)
        if not isinstance(value, str) or not SLUG_RE.match(value):  # match + \Z: whole string
            raise FrameError("bad_request", f"'{key}' must be a topic slug", self.ref)
        return value

    def topic_or_channel(self, key: str = "topic") -> str:
        """A topic slug, or an object channel name (notifications.channels: it has a dot)."""
        from .. import channels

        value = self.body.get(key)
        if isinstance(value, str) and "." in value and channels.is_channel_name(value):
            return value
        return self.slug(key)

    def ids(self, key: str = "ids") -> list[int]:
        value = self.body.get(key)
        if (
            not isinstance(value, list)
            or not all(_is_int(item) for item in value)
            or len(value) > 1000
        ):
            raise FrameError(
                "bad_request", f"'{key}' must be a list of at most 1000 integers", self.ref
            )
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse(text: str) -> ClientFrame:
    """Validate one client text frame; raise :class:`FrameError` with the protocol's code."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("bad_json", "the frame is not valid JSON") from None
    if not isinstance(body, dict):
        raise FrameError("bad_frame", "a frame must be a JSON object")
    ref = body.get("ref")
    if ref is not None and not (isinstance(ref, str) or _is_int(ref)):
        raise FrameError("bad_request", "'ref' must be a string or an integer")
    if isinstance(ref, str):
        if len(ref) > 200:
            raise FrameError("bad_request", "'ref' is longer than 200 characters")
        try:
            ref.encode("utf-8")  # echoed in the answer, which must be valid UTF-8
        except UnicodeEncodeError:
            raise FrameError("bad_request", "'ref' is not valid Unicode text") from None
    kind = body.get("type")
    if not isinstance(kind, str):
        raise FrameError("bad_request", "'type' must be a string", ref)
    return ClientFrame(type=kind, ref=ref, body=body)
