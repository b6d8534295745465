"""Strict JSON for the HTTP API: only what every store and every client can hold.

Python's ``json`` accepts more than JSON (``NaN``, ``Infinity``), and JSON itself allows
values that cannot be stored or sent on: lone UTF-16 surrogates (not encodable as UTF-8), NUL
characters (PostgreSQL text and jsonb refuse them), integers beyond 64 bits (jsonb and
JavaScript lose them), numbers that overflow to infinity, duplicate keys (which one wins
depends on the parser) and nesting deep enough to exhaust a recursive encoder. A document with
any of these is refused at the door, so that one bad row can never break a replay.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..validation import MAX_DEPTH, MAX_INT

# The limits are validation.py's, which notify() applies to every other entry point; this
# module checks them while parsing, to name the path and to catch duplicate keys.
MIN_INT = -MAX_INT - 1


class StrictJsonError(ValueError):
    """The body is not strict JSON. ``code`` is ``bad_json`` when it cannot be parsed at all
    and ``not_strict_json`` for a value outside strict JSON, whose dotted path is ``path``
    (None for the whole document)."""

    def __init__(self, message: str, path: str | None = None, *, code: str = "not_strict_json"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


@dataclass(frozen=True)
class _Refused:
    """A number the parser met that strict JSON has no room for; reported with its path."""

    message: str


def _no_constants(name: str) -> _Refused:
    return _Refused(f"{name} is not JSON")


def _finite_float(text: str) -> float | _Refused:
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"the number {text[:40]} is out of range")
    return value


class _Pairs(list):
    """An object's key/value pairs as parsed, so that duplicate keys can be reported."""


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    return _Pairs(pairs)


def loads(body: bytes) -> Any:
    """Parse a UTF-8 JSON document strictly; raise :class:`StrictJsonError` for anything
    outside strict JSON (see the module docstring)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJsonError("the body is not UTF-8", code="bad_json") from None
    try:
        raw = json.loads(
            text,
            parse_constant=_no_constants,
            parse_float=_finite_float,
            object_pairs_hook=_pairs,
        )
    except RecursionError:
        raise StrictJsonError(f"the document is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4300 digits
        raise StrictJsonError(f"invalid JSON: {exc}", code="bad_json") from None
    return _build(raw, "", 0)


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_string(value: str, path: str) -> None:
    if "\x00" in value:
        raise StrictJsonError("NUL characters are not allowed", path or None)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJsonError("lone surrogates are not valid Unicode", path or None) from None


def _build(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels", path or None)
    if isinstance(value, _Pairs):
        result: dict[str, Any] = {}
        for key, item in value:
            _check_string(key, path)
            if key in result:
                raise StrictJsonError(f"duplicate key {key!r}", _join(path, key))
            result[key] = _build(item, _join(path, key), depth + 1)
        return result
    if isinstance(value, list):
        return [_build(item, _join(path, i), depth + 1) for i, item in enumerate(value)]
    if isinstance(value, _Refused):
        raise StrictJsonError(value.message, path or None)
    if isinstance(value, str):
        _check_string(value, path)
    out_of_range = isinstance(value, int) and not MIN_INT <= value <= MAX_INT
    if out_of_range and not isinstance(value, bool):
        raise StrictJsonError("integers must fit in 64 bits", path or None)
    return value
