"""Object channels: the Django version of Laravel's ``Broadcast::channel`` and Pusher's private
channels (docs/channels.md).

A site registers a pattern and an authorisation function::

    from notifications.channels import channel

    @channel("orders.<int:order_id>")
    def can_follow_order(user, order_id: int) -> bool:
        return Order.objects.filter(pk=order_id, customer_id=user.pk).exists()

Browsers follow ``orders.42`` with the ordinary ``subscribe`` frame; ``notify("orders.42",
...)`` reaches the sockets currently authorised for it. No ``Topic`` row is needed. The function
is asked at ``subscribe``, again before every replay of the channel, and again by the hub's
periodic session check, so a socket stops receiving the channel within
``SESSION_CHECK_INTERVAL`` of losing the right to it.

Pattern syntax: literal parts separated by dots, and converters as in Django's ``path()``:
``<int:name>`` (ASCII digits, passed as ``int``), ``<str:name>`` (letters, digits, ``-`` and
``_``), ``<slug:name>`` (the same), ``<uuid:name>`` (passed as ``uuid.UUID``). A whole channel
name is at most 100 characters of ``[-a-zA-Z0-9_.]`` and always contains a dot, which topic
slugs never do, so channels and topics cannot be confused.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[-a-zA-Z0-9_]{1,50}(?:\.[-a-zA-Z0-9_]{1,50})+\Z")
MAX_NAME = 100
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "int": (r"[0-9]{1,19}", int),
    "str": (r"[-a-zA-Z0-9_]+", str),
    "slug": (r"[-a-zA-Z0-9_]+", str),
    "uuid": (
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        uuid.UUID,
    ),
}
_PART_RE = re.compile(r"<(?:(?P<kind>[a-z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True)
class Channel:
    pattern: str
    regex: re.Pattern[str]
    converters: dict[str, Callable[[str], Any]]
    authorize: Callable[..., bool]

    def match(self, name: str) -> dict[str, Any] | None:
        found = self.regex.match(name)
        if found is None:
            return None
        try:
            return {key: self.converters[key](value) for key, value in found.groupdict().items()}
        except ValueError:
            return None


_registry: list[Channel] = []


def _compile(pattern: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    regex, converters, position = "", {}, 0
    for part in _PART_RE.finditer(pattern):
        literal = pattern[position : part.start()]
        if not re.fullmatch(r"[-a-zA-Z0-9_.]*", literal):
            raise ValueError(f"channel pattern {pattern!r}: {literal!r} is not a literal part")
        regex += re.escape(literal)
        kind = part["kind"] or "str"
        if kind not in _CONVERTERS:
            raise ValueError(f"channel pattern {pattern!r}: unknown converter {kind!r}")
        expression, convert = _CONVERTERS[kind]
        regex += f"(?P<{part['name']}>{expression})"
        converters[part["name"]] = convert
        position = part.end()
    tail = pattern[position:]
    if not re.fullmatch(r"[-a-zA-Z0-9_.]*", tail):
        raise ValueError(f"channel pattern {pattern!r}: {tail!r} is not a literal part")
    regex += re.escape(tail)
    if "." not in pattern:
        raise ValueError(f"channel pattern {pattern!r} needs a dot (topic slugs have none)")
    return re.compile(regex + r"\Z"), converters


def channel(pattern: str) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """Register ``pattern`` with the decorated authorisation function
    ``f(user, **values) -> bool`` (``user`` may be anonymous). The first registered pattern
    that matches a name decides."""

    def register(authorize: Callable[..., bool]) -> Callable[..., bool]:
        regex, converters = _compile(pattern)
        _registry.append(Channel(pattern, regex, converters, authorize))
        return authorize

    return register


def unregister(pattern: str) -> None:
    """Forget a pattern (tests)."""
    _registry[:] = [c for c in _registry if c.pattern != pattern]


def is_channel_name(name: str) -> bool:
    """A well-formed channel name (it says nothing about registration)."""
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(NAME_RE.match(name))


def resolve(name: str) -> tuple[Channel, dict[str, Any]] | None:
    """The registered channel a name belongs to, with its converted values, or None."""
    if not is_channel_name(name):
        return None
    for registered in _registry:
        values = registered.match(name)
        if values is not None:
            return registered, values
    return None


def may_follow(user: Any, name: str) -> bool:
    """Whether ``user`` may follow channel ``name`` now. An unregistered name, or an
    authorisation function that raises, is a no (and the exception is logged)."""
    found = resolve(name)
    if found is None:
        return False
    registered, values = found
    try:
        return bool(registered.authorize(user, **values))
    except Exception:
        logger.exception("authorising %r for user %s failed", name, getattr(user, "pk", None))
        return False
