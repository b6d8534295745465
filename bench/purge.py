"""Purge benchmark: fill PostgreSQL with N events, then time ``purge_notifications``.

    .venv/bin/python -m bench.purge [--events 1000000] [--old-fraction 0.9]
        [--batch-size 2000] [--database-url postgres://postgres@127.0.0.1:5432/purgebench]

1. Migrate the database named by ``--database-url`` (created if missing; its event tables are
   emptied first, so never point it at a database you care about).
2. Insert ``--events`` events in one ``INSERT ... SELECT FROM generate_series`` (seconds for a
   million), ``--old-fraction`` of them 200 days old and the rest from the last hour; every
   tenth event is sent to a named user (one ``Recipient`` row) and every twentieth is read
   (one ``ReadMark``), so that the purge deletes dependent rows as it would in production.
3. Time ``retention.purge(older_than=90 days)`` (what ``manage.py purge_notifications
   --older-than 90d`` runs), and check that exactly the old events are gone.

Prints one JSON object: the events, what was deleted, seconds to fill and to purge, deleted
events per second. The figure depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "loopback databases only"
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def fill(events: int, old_fraction: float) -> float:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from notifications.models import Event, PurgeWatermark, ReadMark, Recipient

    started = time.monotonic()
    user, _ = get_user_model().objects.get_or_create(username="purge-bench")
    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {Event._meta.db_table}, {Recipient._meta.db_table}, "
            f"{ReadMark._meta.db_table}, {Event.groups.through._meta.db_table}, "
            f"{PurgeWatermark._meta.db_table} RESTART IDENTITY CASCADE"
        )
        old = int(events * old_fraction)
        cursor.execute(
            f"""
            INSERT INTO {Event._meta.db_table}
                (title, body, url, level, data, reach, to_topic, recipient_count, created_at)
            SELECT 'bench ' || g, 'a body of a few words', '/notifications/', 'info',
                   '{{}}'::jsonb,
                   CASE WHEN g %% 10 = 0 THEN '' ELSE 'everyone' END,
                   false, CASE WHEN g %% 10 = 0 THEN 1 ELSE 0 END,
                   CASE WHEN g <= %s THEN now() - interval '200 days' + g * interval '1 ms'
                        ELSE now() - interval '1 hour' + (g - %s) * interval '1 ms' END
            FROM generate_series(1, %s) AS g
            """,
            [old, old, events],
        )
        cursor.execute(
            f"INSERT INTO {Recipient._meta.db_table} (event_id, user_id) "
            f"SELECT id, %s FROM {Event._meta.db_table} WHERE id %% 10 = 0",
            [user.pk],
        )
        cursor.execute(
            f"INSERT INTO {ReadMark._meta.db_table} (event_id, user_id, read_at) "
            f"SELECT id, %s, now() FROM {Event._meta.db_table} WHERE id %% 20 = 0",
            [user.pk],
        )
        cursor.execute(f"ANALYZE {Event._meta.db_table}")
        cursor.execute(f"ANALYZE {Recipient._meta.db_table}")
        cursor.execute(f"ANALYZE {ReadMark._meta.db_table}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.purge", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--old-fraction", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/purgebench")
    args = parser.parse_args(argv)
    ensure_database(args.database_url)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from notifications import retention
    from notifications.models import Event

    call_command("migrate", verbosity=0)
    fill_seconds = fill(args.events, args.old_fraction)
    old = Event.objects.filter(created_at__lt=django.utils.timezone.now() - timedelta(days=90))
    expected = old.count()
    result = retention.purge(older_than=timedelta(days=90), batch_size=args.batch_size)
    remaining = Event.objects.count()
    report = {
        "events": args.events,
        "deleted": result.deleted,
        "expected": expected,
        "remaining": remaining,
        "batch_size": args.batch_size,
        "fill_seconds": round(fill_seconds, 2),
        "purge_seconds": round(result.seconds, 2),
        "deleted_per_second": round(result.deleted / result.seconds) if result.seconds else None,
        "purged_through": result.purged_through,
    }
    print(json.dumps(report))
    ok = result.deleted == expected and remaining == args.events - expected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
