"""Structured logs: one JSON object per line for each socket and publish event, when the
``JSON_LOGS`` setting is on (off by default).

Events and their fields (every line also has ``ts``, ISO 8601 UTC, and ``event``):

- ``connect``: ``conn``, ``user`` (id or null), ``client`` (address), ``cursor``;
- ``reject``: ``reason``, ``client``, and ``origin`` or ``user`` where they apply;
- ``close``: ``conn``, ``user``, ``code``, ``by`` (``server`` or ``client``);
- ``replay``: ``conn``, ``user``, ``after``, ``count``, ``complete``;
- ``publish_failure``: ``message`` (the layer message type), ``error``;
- ``error``: ``where``, ``conn`` when known, ``error`` (exception class and message).

Never in them: session keys, cookies, tokens, notification content. The lines go to the
``notifications.events`` logger at INFO; give it a handler whose format is ``%(message)s``
(project/settings.py does). Nothing here runs on the fan-out path: these are per-socket
and per-failure events only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from .conf import notifications_settings

logger = logging.getLogger("notifications.events")


def enabled() -> bool:
    """Whether structured lines are written (``JSON_LOGS`` on and the logger at INFO)."""
    return bool(notifications_settings.JSON_LOGS) and logger.isEnabledFor(logging.INFO)


def emit(event: str, **fields: Any) -> None:
    """Write one JSON line for ``event`` with ``fields`` (values that JSON cannot encode are
    written as strings), if structured logs are on."""
    if not enabled():
        return
    record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event}
    record.update(fields)
    logger.info(json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":")))


def describe(exc: BaseException | None) -> str | None:
    """An exception as ``Class: message``, cut to 200 characters, for the ``error`` field."""
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"[:200]
