"""Strict input checks shared by every entry point (``notify()``, the CLI, the HTTP API).

What is stored must be sendable: every frame is JSON text in UTF-8, and PostgreSQL refuses NUL
characters in text and JSON. A value that passes here can be stored on every supported
database and encoded into a frame; anything else is a ``ValueError`` naming the field, raised
before anything is stored, so that one bad row can never break anyone's replay.
"""

from __future__ import annotations

import math
from typing import Any

MAX_INT = 2**63 - 1  # ids and numbers a 64-bit database integer (and JavaScript's JSON) keeps
MAX_DEPTH = 32


def check_text(value: Any, field: str) -> str:
    """``value`` is a str with no NUL character and no lone surrogate."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{field} is not valid Unicode text (a lone surrogate)") from None
    return value


def check_json(value: Any, field: str, depth: int = 0) -> None:
    """``value`` is strict JSON: objects with string keys, arrays, text as
    :func:`check_text` wants it, finite numbers within 64 bits, booleans and null."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{field} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ValueError(f"{field} is an integer beyond 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number (NaN and Infinity are not JSON)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{field} has a key that is not a string: {key!r}")
            check_text(key, f"{field} key")
            check_json(item, f"{field}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json(item, f"{field}[{index}]", depth + 1)
    else:
        raise ValueError(f"{field} holds a {type(value).__name__}, which is not JSON")


def check_id(value: int, kind: str) -> int:
    """A database id: an int that fits 64 bits (the drivers overflow otherwise)."""
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise ValueError(f"no {kind} with id {value}")
    return value
