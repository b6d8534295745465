"""Retention: ``manage.py purge_notifications``, the purge watermark, replay and the inbox after
a purge. Runs on SQLite and on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from notifications import notify, retention, selectors, services
from notifications.models import Event, PurgeWatermark, ReadMark, Recipient

pytestmark = pytest.mark.django_db(transaction=True)


def age(events: list[Event], days: int) -> None:
    Event.objects.filter(id__in=[e.id for e in events]).update(
        created_at=timezone.now() - timedelta(days=days)
    )


def test_parse_age_units():
    assert retention.parse_age("90d") == timedelta(days=90)
    assert retention.parse_age("12h") == timedelta(hours=12)
    assert retention.parse_age(" 30m ") == timedelta(minutes=30)
    assert retention.parse_age(timedelta(days=1)) == timedelta(days=1)
    for bad in ("90", "d", "1.5d", "-1d", "0d", "90s", "90 days", ""):
        with pytest.raises(ValueError):
            retention.parse_age(bad)


def test_purge_deletes_old_events_in_batches_and_raises_the_watermark(make_user):
    alice = make_user("alice")
    old = [notify(alice, f"old {n}") for n in range(5)]
    recent = notify(alice, "recent")
    age(old, days=100)
    services.mark_read(alice, [old[0].id, recent.id])
    batches: list[int] = []
    result = retention.purge(older_than=timedelta(days=90), batch_size=2, progress=batches.append)
    assert batches == [2, 2, 1]
    assert result.deleted == 5 and result.purged_through == old[-1].id
    assert list(Event.objects.values_list("id", flat=True)) == [recent.id]
    assert not Recipient.objects.filter(event_id__in=[e.id for e in old]).exists()
    assert list(ReadMark.objects.values_list("event_id", flat=True)) == [recent.id]
    assert retention.watermark() == old[-1].id
    assert PurgeWatermark.objects.get().deleted_total == 5
    # A second purge finds nothing and keeps the mark.
    again = retention.purge(older_than=timedelta(days=90))
    assert (again.deleted, again.purged_through) == (0, old[-1].id)


def test_the_newest_event_is_kept(make_user):
    alice = make_user("alice")
    events = [notify(alice, "a"), notify(alice, "b")]
    age(events, days=365)
    result = retention.purge(older_than=timedelta(days=90))
    assert result.deleted == 1
    # The page cursor (the newest id) stays above the watermark: no false "incomplete".
    assert selectors.stream_cursor() == events[1].id > retention.watermark() == events[0].id


def test_inbox_and_unread_after_a_purge(make_user):
    alice = make_user("alice")
    old = [notify(alice, "old 1"), notify(alice, "old 2")]
    kept = [notify(alice, "kept 1"), notify(alice, "kept 2")]
    age(old, days=100)
    assert selectors.unread_count(alice) == 4
    retention.purge(older_than=timedelta(days=90))
    assert selectors.unread_count(alice) == 2
    page = selectors.inbox_page(alice)
    assert [e.id for e in page.page] == [kept[1].id, kept[0].id]
    assert services.mark_all_read(alice) == 0


async def test_replay_from_a_purged_range_is_incomplete(amake_user, connect):
    alice = await amake_user("alice")
    old = [await db(notify)(alice, f"old {n}") for n in range(3)]
    kept = await db(notify)(alice, "kept")
    await db(age)(old, 100)
    await db(retention.purge)(older_than=timedelta(days=90))
    sock = await connect(alice, cursor=0)
    frame = await sock.expect("notification")
    assert (frame["id"], frame["replay"]) == (kept.id, True)
    assert await sock.receive() == {"type": "replayed", "count": 1, "complete": False}
    # A cursor at the watermark missed nothing that was purged.
    sock2 = await connect(alice, cursor=old[-1].id)
    assert (await sock2.expect("notification"))["id"] == kept.id
    assert await sock2.receive() == {"type": "replayed", "count": 1, "complete": True}


async def test_ids_that_never_committed_are_not_a_purge(amake_user, connect):
    alice = await amake_user("alice")
    first = await db(notify)(alice, "first")

    def rolled_back() -> None:
        with transaction.atomic():
            notify(alice, "never committed")
            transaction.set_rollback(True)

    await db(rolled_back)()
    last = await db(notify)(alice, "last")
    if connection.vendor == "postgresql":  # SQLite rolls its id sequence back too
        assert last.id > first.id + 1  # a gap in the ids
    sock = await connect(alice, cursor=0)
    assert [f["id"] for f in await sock.notifications(2)] == [first.id, last.id]
    assert await sock.receive() == {"type": "replayed", "count": 2, "complete": True}


def test_command_output_and_the_retention_setting(make_user):
    alice = make_user("alice")
    old = [notify(alice, "old"), notify(alice, "old 2")]
    notify(alice, "new")
    age(old, days=10)
    out = io.StringIO()
    call_command("purge_notifications", "--older-than", "240h", "--dry-run", stdout=out)
    assert out.getvalue().startswith("would delete 2 notifications created before ")
    assert Event.objects.count() == 3
    with pytest.raises(CommandError, match="give --older-than"):
        call_command("purge_notifications", stdout=io.StringIO())
    with pytest.raises(CommandError, match="not an age"):
        call_command("purge_notifications", "--older-than", "10y", stdout=io.StringIO())
    out = io.StringIO()
    with override_settings(NOTIFICATIONS={"RETENTION": "7d"}):
        call_command("purge_notifications", stdout=out)
    line = out.getvalue().strip()
    assert line.startswith(f"deleted=2 purged_through={old[1].id} cutoff="), line
    assert "purging" not in out.getvalue()  # no progress bar: not a terminal


def test_progress_bar_only_on_a_terminal(make_user):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    alice = make_user("alice")
    events = [notify(alice, f"n{n}") for n in range(4)]
    age(events, days=2)
    out = Terminal()
    call_command("purge_notifications", "--older-than", "1d", "--batch-size", "1", stdout=out)
    assert "purging" in out.getvalue() and "3/3" in out.getvalue()
    assert "deleted=3 " in out.getvalue()
