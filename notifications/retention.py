"""Retention: delete old notifications in short batches, and remember how far (the purge
watermark) so that a replay from a cursor inside the purged range says it is incomplete.

``manage.py purge_notifications`` is the front end. Deleting goes through Django's collector
(so every table that points at ``Event`` follows, with its ``on_delete``), a batch of ids per
transaction: no statement holds locks on the table for long, and a replay or an inbox read
running meanwhile sees either a whole batch or none of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .conf import notifications_settings
from .models import Event, PurgeWatermark

_AGE_RE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
# How long a process trusts the watermark it read (replays read it at most this often).
WATERMARK_TTL = 5.0


def parse_age(value: str | timedelta) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"`` (or a timedelta) as a positive timedelta; ValueError
    for anything else."""
    if isinstance(value, timedelta):
        age = value
    else:
        match = _AGE_RE.match(str(value))
        if not match:
            raise ValueError(
                f"{value!r} is not an age: use a whole number and d, h or m (90d, 12h, 30m)"
            )
        age = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if age <= timedelta(0):
        raise ValueError("the age must be greater than zero")
    return age


def configured_age() -> timedelta | None:
    """The ``RETENTION`` setting as a timedelta, or None when it is not set."""
    value = notifications_settings.RETENTION
    return None if value in (None, "") else parse_age(value)


@dataclass(frozen=True)
class PurgeResult:
    deleted: int
    purged_through: int
    cutoff: datetime
    seconds: float


def purge_candidates(cutoff: datetime) -> tuple[int, int | None]:
    """(how many events a purge at ``cutoff`` would delete, the newest id it would keep)."""
    newest = Event.objects.aggregate(top=Max("id"))["top"]
    if newest is None:
        return 0, None
    # The newest event is never deleted: the stream cursor pages embed stays at or above the
    # watermark, so a fresh client is never told its (empty) replay was incomplete.
    return Event.objects.filter(created_at__lt=cutoff, id__lt=newest).count(), newest


def purge(
    *,
    older_than: timedelta,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete the events created before ``now - older_than`` (all but the newest event),
    ``batch_size`` per transaction, oldest first; ``progress(n)`` after each batch. The
    watermark is raised in the same transaction as each batch's delete."""
    started = time.monotonic()
    cutoff = (now or timezone.now()) - older_than
    newest = Event.objects.aggregate(top=Max("id"))["top"]
    deleted = 0
    through = watermark()
    if newest is not None:
        after = 0
        while True:
            with transaction.atomic():
                ids = list(
                    Event.objects.filter(created_at__lt=cutoff, id__gt=after, id__lt=newest)
                    .order_by("id")
                    .values_list("id", flat=True)[:batch_size]
                )
                if not ids:
                    break
                Event.objects.filter(id__in=ids).only("id").delete()
                mark, _ = PurgeWatermark.objects.select_for_update().get_or_create(pk=1)
                mark.purged_through = through = max(mark.purged_through, ids[-1])
                mark.deleted_total += len(ids)
                mark.purged_at = timezone.now()
                mark.save()
            deleted += len(ids)
            after = ids[-1]
            if progress is not None:
                progress(len(ids))
    _cache.forget()
    return PurgeResult(deleted, through, cutoff, time.monotonic() - started)


def watermark() -> int:
    """The highest event id a purge deleted (0 when none did)."""
    return PurgeWatermark.objects.filter(pk=1).values_list("purged_through", flat=True).first() or 0


class _WatermarkCache:
    """The watermark as this process last read it, re-read at most every ``WATERMARK_TTL``
    seconds: a purge runs once a day, a replay runs for every reconnect."""

    def __init__(self) -> None:
        self.value = 0
        self.read_at: float | None = None

    def forget(self) -> None:
        self.read_at = None

    async def get(self) -> int:
        now = time.monotonic()
        if self.read_at is None or now - self.read_at > WATERMARK_TTL:
            self.value = await database_sync_to_async(watermark)()
            self.read_at = now
        return self.value


_cache = _WatermarkCache()


async def purged_after(cursor: int) -> bool:
    """Whether events above ``cursor`` may have been purged: a replay from it is incomplete.
    The watermark may be up to ``WATERMARK_TTL`` seconds old in another process."""
    return cursor < await _cache.get()
