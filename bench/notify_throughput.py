"""notify() against notify_many(): notifications stored and published per second.

    .venv/bin/python -m bench.notify_throughput [--database-url postgres://...] [--redis-url ...]

Runs in this process against a fresh database (PostgreSQL by default: the database
``bench_notify`` on 127.0.0.1, created and migrated here) and publishes through channels-redis
when ``--redis-url`` is given (as a production process does), else the in-memory layer. Every
notification goes to one named user (the common case). Prints one JSON line per form.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _setup(database_url: str, redis_url: str | None) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _fresh_postgres(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_notify")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--single", type=int, default=2000, help="notify() calls")
    parser.add_argument("--batched", type=int, default=50_000, help="notify_many() items")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    if args.database_url.startswith("postgres"):
        _fresh_postgres(args.database_url)
    _setup(args.database_url, args.redis_url)

    from django.contrib.auth import get_user_model
    from django.db import connection

    from notifications import Notification, notify, notify_many
    from notifications.realtime.publish import flush

    user_model = get_user_model()
    user_model.objects.bulk_create(
        [user_model(username=f"u{i}", password="!") for i in range(args.users)]
    )
    users = list(user_model.objects.order_by("pk"))

    started = time.perf_counter()
    for i in range(args.single):
        notify(users[i % len(users)], f"single {i}")
    flush()
    single = args.single / (time.perf_counter() - started)

    started = time.perf_counter()
    for start in range(0, args.batched, args.batch_size):
        notify_many(
            [
                Notification(users[i % len(users)], f"batched {i}")
                for i in range(start, min(start + args.batch_size, args.batched))
            ]
        )
    flush()
    batched = args.batched / (time.perf_counter() - started)
    common = {"database": connection.vendor, "layer": "redis" if args.redis_url else "memory"}
    print(json.dumps({"form": "notify()", "per_second": round(single), **common}))
    print(
        json.dumps(
            {
                "form": "notify_many()",
                "batch_size": args.batch_size,
                "per_second": round(batched),
                **common,
            }
        )
    )


if __name__ == "__main__":
    main()
