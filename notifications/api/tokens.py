"""Bearer tokens of the HTTP API: create, revoke, authenticate, and count requests per minute.

A token is ``ntk_`` followed by 43 URL-safe characters (32 bytes from :mod:`secrets`). It is
shown once, when created; the database keeps only its SHA-256 digest and its first characters
(``prefix``, not secret) to find candidates and to tell tokens apart in lists. A presented
token is compared with the stored digest in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ..conf import notifications_settings
from ..models import ApiRateWindow, ApiScope, ApiToken

TOKEN_PREFIX = "ntk_"
PREFIX_LENGTH = 12  # "ntk_" and 8 random characters: shown in lists, not secret
MAX_TOKEN_LENGTH = 200  # longer Authorization values are not tokens; do not hash them


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (duplicate or unknown name, bad scope)."""


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))  # de-duplicated, in order
    unknown = [scope for scope in scopes if scope not in ApiScope.values]
    if unknown:
        raise TokenError(
            f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(ApiScope.values)}"
        )
    return scopes


def create_token(
    name: str, *, scopes: Iterable[str] = (), rate: int | None = None
) -> tuple[ApiToken, str]:
    """Store a new token named ``name`` and return it with its secret value.

    The value is returned only here: the database keeps its digest. ``scopes`` limits the
    audience keys the token may use (empty: all); ``rate`` is its limit in requests per minute
    (None: ``NOTIFICATIONS["API_RATE"]``). Raises :class:`TokenError` for an empty or taken
    name, an unknown scope or a rate below 1.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise TokenError("a token name is a non-empty string of at most 100 characters")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 1):
        raise TokenError("rate must be a positive number of requests per minute")
    checked = _check_scopes(scopes)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(
                name=name,
                prefix=raw[:PREFIX_LENGTH],
                digest=_digest(raw),
                scopes=checked,
                rate=rate,
            )
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists already") from None
    return token, raw


def issue(token: ApiToken) -> str:
    """Give an unsaved :class:`ApiToken` (the admin's add form) a fresh secret; return it."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token.prefix = raw[:PREFIX_LENGTH]
    token.digest = _digest(raw)
    return raw


def revoke_token(name: str) -> tuple[ApiToken, bool]:
    """Revoke the token named ``name``; return it and whether it was active until now.

    Later requests with it get 401. Raises :class:`TokenError` for an unknown name.
    """
    token = ApiToken.objects.filter(name=name).first()
    if token is None:
        raise TokenError(f"no token named {name!r}")
    changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    return token, bool(changed)


def authenticate(raw: str) -> ApiToken | None:
    """The active token whose value is ``raw``, or None (unknown, revoked or malformed).

    Marks the token used (``last_used_at``).
    """
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > MAX_TOKEN_LENGTH:
        return None
    digest = _digest(raw)
    found = None
    for token in ApiToken.objects.filter(prefix=raw[:PREFIX_LENGTH], revoked_at__isnull=True):
        # Every candidate is compared, so the time taken does not say which one matched.
        if hmac.compare_digest(token.digest, digest):
            found = token
    if found is not None:
        found.last_used_at = timezone.now()
        ApiToken.objects.filter(pk=found.pk).update(last_used_at=found.last_used_at)
    return found


def allowed_keys(token: ApiToken) -> frozenset[str]:
    """The audience keys ``token`` may use."""
    return frozenset(token.scopes or ApiScope.values)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    count: int
    retry_after: int  # seconds until the current window ends


def hit(token: ApiToken, *, now: float | None = None) -> RateDecision:
    """Count one request of ``token`` in the current minute and say whether it is allowed.

    The count is one row per token and minute, incremented by a single upsert, so that the
    limit holds however many server processes answer. Fixed windows: a client may send up to
    twice the rate across a minute boundary, which is enough to stop a runaway loop.
    """
    now = time.time() if now is None else now
    window = int(now // 60)
    limit = token.rate or notifications_settings.API_RATE
    table = connection.ops.quote_name(ApiRateWindow._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        # INSERT ... ON CONFLICT ... RETURNING: PostgreSQL, and SQLite >= 3.35.
        cursor.execute(
            f"INSERT INTO {table} (token_id, minute, count) VALUES (%s, %s, 1) "
            f"ON CONFLICT (token_id, minute) DO UPDATE SET count = {table}.count + 1 "
            "RETURNING count",
            [token.pk, window],
        )
        (count,) = cursor.fetchone()
        if count == 1:  # the first request of a minute clears the token's older windows
            ApiRateWindow.objects.filter(token=token, minute__lt=window).delete()
    retry_after = max(1, math.ceil((window + 1) * 60 - now))
    return RateDecision(allowed=count <= limit, limit=limit, count=count, retry_after=retry_after)
