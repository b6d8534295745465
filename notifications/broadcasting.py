"""Writes of a broadcast's life: schedule, send now, cancel, duplicate, test, background send.

Each server process runs :func:`send_due` every ``SCHEDULER_INTERVAL`` (realtime/scheduler.py):
it sends scheduled broadcasts when due, and the "send now" of a large audience (more than
``SEND_INLINE_MAX_USERS`` named users, which cost a row each), so that the admin request that
sends to 100,000 users only updates one row and returns. A due broadcast is claimed with one
conditional UPDATE (the status and claim time it was read with), so exactly one process wins
it, on SQLite and PostgreSQL alike, however many processes look; "send now" of a smaller
audience claims the same way and sends in the request. Either way the send goes through
:func:`services.send_broadcast` on behalf of ``scheduled_by``, whose permission is checked
again then; a refusal marks the broadcast failed, with the reason, and writes it to the admin
log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import services
from .conf import notifications_settings
from .models import TITLE_MAX_LENGTH, Broadcast, Event

logger = logging.getLogger(__name__)

Status = Broadcast.Status
# States a broadcast can still be edited and sent from.
EDITABLE = (Status.DRAFT, Status.FAILED)


class BroadcastStateError(ValueError):
    """The broadcast is not in a state that allows this (already sent, not scheduled...)."""


def admin_log(broadcast: Broadcast, user: AbstractBaseUser | None, message: str) -> None:
    """Record ``message`` about ``broadcast`` in Django's admin log, as ``user``."""
    user = user or broadcast.scheduled_by or broadcast.created_by
    if user is None:  # the log needs a user; the broadcast's authors were all deleted
        logger.warning("broadcast %s: %s", broadcast.pk, message)
        return
    LogEntry.objects.log_actions(
        user.pk,
        Broadcast.objects.filter(pk=broadcast.pk),
        CHANGE,
        change_message=message,
        single_object=True,
    )


def _check_audience(broadcast: Broadcast) -> None:
    """``ValueError`` for an audience that names nobody, before queuing (cheaply: a list of
    100,000 named users is not loaded for that)."""
    kind = broadcast.audience
    if kind == Broadcast.Audience.USERS:
        if not broadcast.pending_users and not broadcast.users.exists():
            raise ValueError("choose at least one of the users")
    elif kind == Broadcast.Audience.GROUPS:
        if not broadcast.groups.exists():
            raise ValueError("choose at least one of the groups")
    else:
        services.broadcast_audience(broadcast)


def schedule(
    broadcast: Broadcast, *, by: AbstractBaseUser, at: datetime | None = None
) -> Broadcast:
    """Queue ``broadcast`` to be sent at ``at`` (now when None) on behalf of ``by``.

    Raises ``PermissionDenied`` unless ``by`` may send broadcasts, ``ValueError`` if its
    audience names nobody, :class:`BroadcastStateError` unless it is a draft or failed.
    """
    services.check_may_send(by)
    _check_audience(broadcast)
    when = at or timezone.now()
    if timezone.is_naive(when):
        raise ValueError("the send time must be an aware datetime")
    if broadcast.expires_at is not None and broadcast.expires_at <= when:
        raise ValueError("it would expire before it is sent")
    queued = Broadcast.objects.filter(pk=broadcast.pk, status__in=EDITABLE).update(
        status=Status.SCHEDULED,
        send_at=when,
        scheduled_by=by,
        claimed_at=None,
        failure_reason="",
    )
    broadcast.refresh_from_db()
    if not queued:
        raise BroadcastStateError(f"it is {broadcast.get_status_display().lower()}")
    return broadcast


def named_users(broadcast: Broadcast, *, limit: int | None = None) -> int:
    """How many users the broadcast names one by one (each costs a row when it is sent);
    with ``limit``, counting stops there (a cheap "more than N?")."""
    if broadcast.audience != Broadcast.Audience.USERS:
        return 0
    pending = len(broadcast.pending_users or ())
    # The through table alone (no join with the users): an index-only count.
    rows = Broadcast.users.through.objects.filter(broadcast_id=broadcast.pk)
    if limit is not None:
        rows = rows.values("pk")[: max(limit - pending, 0)]
    return pending + rows.count()


def send_now(broadcast: Broadcast, *, by: AbstractBaseUser) -> Outcome | None:
    """Send ``broadcast`` now on behalf of ``by``.

    An audience of more than ``SEND_INLINE_MAX_USERS`` named users is handed to the
    background sender (returns None; it goes out within ``SCHEDULER_INTERVAL``); any other
    is claimed and sent in this call, exactly as the background sender would (returns the
    :class:`Outcome`). Raises as :func:`schedule` does.
    """
    inline_max = notifications_settings.SEND_INLINE_MAX_USERS
    if named_users(broadcast, limit=inline_max + 1) > inline_max:
        schedule(broadcast, by=by, at=timezone.now())
        return None
    services.check_may_send(by)
    _check_audience(broadcast)
    now = timezone.now()
    if broadcast.expires_at is not None and broadcast.expires_at <= now:
        raise ValueError("it has already expired")
    # send_at stays empty: it was sent at once, not scheduled (the follow-up tells them apart).
    claimed = Broadcast.objects.filter(pk=broadcast.pk, status__in=EDITABLE).update(
        status=Status.SENDING, send_at=None, scheduled_by=by, claimed_at=now, failure_reason=""
    )
    if not claimed:
        broadcast.refresh_from_db()
        raise BroadcastStateError(f"it is {broadcast.get_status_display().lower()}")
    outcome = send_claimed(broadcast.pk)
    broadcast.refresh_from_db()
    return outcome


def cancel(broadcast: Broadcast) -> bool:
    """Take a scheduled broadcast back to a draft; False if it was not scheduled any more
    (a process has claimed it, or it went out)."""
    cancelled = Broadcast.objects.filter(pk=broadcast.pk, status=Status.SCHEDULED).update(
        status=Status.DRAFT, scheduled_by=None
    )
    broadcast.refresh_from_db()
    return bool(cancelled)


def duplicate(broadcast: Broadcast, *, by: AbstractBaseUser) -> Broadcast:
    """A new draft with the same message and audience, authored by ``by``."""
    with transaction.atomic():
        copy = Broadcast.objects.create(
            title=broadcast.title,
            body=broadcast.body,
            url=broadcast.url,
            level=broadcast.level,
            audience=broadcast.audience,
            topic=broadcast.topic,
            permission=broadcast.permission,
            pending_users=broadcast.pending_users,
            created_by=by,
        )
        copy.groups.set(broadcast.groups.all())
        through = Broadcast.users.through
        through.objects.bulk_create(
            [
                through(broadcast_id=copy.pk, user_id=user_id)
                for user_id in broadcast.users.values_list("pk", flat=True).iterator()
            ],
            batch_size=1000,
        )
    return copy


def send_test(
    user: AbstractBaseUser, *, title: str, body: str = "", url: str = "", level: str = "info"
) -> Event:
    """Send the message to ``user`` alone, marked as a test; no broadcast records it.

    Raises ``PermissionDenied`` unless ``user`` may send broadcasts, ``ValueError`` for
    content that could not be sent.
    """
    services.check_may_send(user)
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title is required")
    return services.notify(
        user,
        f"[Test] {title}"[:TITLE_MAX_LENGTH],
        body=body,
        url=url,
        level=level,
        data={"test": True},
    )


def _add_pending_users(broadcast: Broadcast) -> None:
    """Turn the ids stored by :func:`notify_users` into the broadcast's ``users`` (in the
    background sender, where 100,000 rows may take a second)."""
    ids = broadcast.pending_users or []
    through = Broadcast.users.through
    known = get_user_model()._default_manager.filter(pk__in=ids).values_list("pk", flat=True)
    through.objects.bulk_create(
        [through(broadcast_id=broadcast.pk, user_id=uid) for uid in known.iterator(2000)],
        batch_size=5000,
        ignore_conflicts=True,
    )
    Broadcast.objects.filter(pk=broadcast.pk).update(pending_users=None)
    broadcast.pending_users = None


def notify_users(
    users: QuerySet,
    *,
    by: AbstractBaseUser,
    title: str,
    body: str = "",
    url: str = "",
    level: str = "info",
) -> Broadcast:
    """Send a message to these users through a new broadcast to them (its follow-up counts
    reads), with :func:`send_now`: many users go through the background sender. The ids are
    stored as one value (``pending_users``), so selecting 100,000 users writes one row here.
    Raises ``PermissionDenied`` unless ``by`` may send broadcasts, ``ValueError`` when
    ``users`` is empty."""
    services.check_may_send(by)
    ids = list(users.filter(is_active=True).order_by().values_list("pk", flat=True))
    if not ids:
        raise ValueError("none of the selected users is active")
    with transaction.atomic():
        broadcast = Broadcast.objects.create(
            title=title,
            body=body,
            url=url,
            level=level,
            audience=Broadcast.Audience.USERS,
            created_by=by,
            pending_users=ids,
        )
        send_now(broadcast, by=by)
    return broadcast


@dataclass(frozen=True)
class Outcome:
    broadcast_id: int
    sent: bool
    detail: str


def _claim(now: datetime) -> list[int]:
    """Claim the due broadcasts for this process (one conditional UPDATE each)."""
    stale = now - timedelta(seconds=notifications_settings.SEND_CLAIM_TIMEOUT)
    due = Broadcast.objects.filter(
        Q(status=Status.SCHEDULED, send_at__lte=now)
        # Claimed by a process that died before its send committed (the send is atomic,
        # so nothing went out): take it again.
        | Q(status=Status.SENDING, claimed_at__lt=stale, sent_at__isnull=True)
    ).order_by("send_at")
    claimed = []
    for pk, status, claimed_at in due.values_list("pk", "status", "claimed_at")[:20]:
        won = Broadcast.objects.filter(pk=pk, status=status, claimed_at=claimed_at).update(
            status=Status.SENDING, claimed_at=now
        )
        if won:
            claimed.append(pk)
    return claimed


def _fail(broadcast: Broadcast, reason: str) -> None:
    Broadcast.objects.filter(pk=broadcast.pk, status=Status.SENDING).update(
        status=Status.FAILED, failure_reason=reason
    )
    admin_log(broadcast, broadcast.scheduled_by, f"Not sent: {reason}")
    logger.warning("broadcast %s not sent: %s", broadcast.pk, reason)


def send_claimed(pk: int) -> Outcome:
    """Send one broadcast this process claimed, on behalf of its ``scheduled_by``."""
    broadcast = Broadcast.objects.select_related("scheduled_by", "created_by").get(pk=pk)
    by = broadcast.scheduled_by
    try:
        with transaction.atomic():  # the log entry commits with the send
            if broadcast.pending_users:
                _add_pending_users(broadcast)
            event = services.send_broadcast(broadcast, by=by)
            admin_log(broadcast, by, f"Sent to {event.recipient_count} recipients.")
    except PermissionDenied:
        who = by.get_username() if by is not None else "nobody (the user was deleted)"
        reason = (
            f"sent on behalf of {who}, who does not have the permission "
            f"{services.SEND_BROADCAST_PERMISSION} (any more)"
        )
        _fail(broadcast, reason)
        return Outcome(pk, False, reason)
    except ValueError as exc:
        _fail(broadcast, str(exc))
        return Outcome(pk, False, str(exc))
    return Outcome(pk, True, f"sent to {event.recipient_count} recipients")


def send_due(*, now: datetime | None = None) -> list[Outcome]:
    """Claim and send every broadcast due by ``now``; what happened to each one claimed.

    Safe to call from any number of processes at once: each broadcast is sent by one.
    """
    outcomes = []
    for pk in _claim(now or timezone.now()):
        try:
            outcomes.append(send_claimed(pk))
        except Exception:
            # The database went away mid-send: the claim goes stale and is taken again.
            logger.exception("sending broadcast %s failed; it will be retried", pk)
    return outcomes


def record_live_delivery(event_id: int, *, users: int, anonymous: int, connections: int) -> None:
    """Add one process's live delivery of a broadcast's event to its follow-up counts."""
    Broadcast.objects.filter(event_id=event_id).update(
        delivered_users=F("delivered_users") + users,
        delivered_anonymous=F("delivered_anonymous") + anonymous,
        delivered_connections=F("delivered_connections") + connections,
        delivery_reports=F("delivery_reports") + 1,
    )
