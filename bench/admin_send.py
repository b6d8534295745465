"""The staff send to 100,000 named users: how long the admin request takes (PRODUCT.md: under
1 s), and how long the background send then takes.

    createdb -h 127.0.0.1 -U postgres consolebench   # once; any empty database will do
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/consolebench \\
        .venv/bin/python -m bench.admin_send [--users 100000] [--repeat 3]

It migrates that database, creates the users with one COPY (bulk_create elsewhere) and a
draft broadcast to all of them, then times, with Django's test client (the whole admin stack:
middleware, session, CSRF-exempt client, messages, admin log):

- the changelist action "Send selected broadcasts now" on the draft;
- the user admin's "Notify selected users" with all 100,000 selected ("select all"),
  which makes a broadcast to them and hands it to the background sender.

(The change form's "Send now" cannot carry 100,000 user ids: Django refuses a POST with more
than DATA_UPLOAD_MAX_NUMBER_FIELDS = 1,000 fields, and no one picks 100,000 users by hand.)

and, after each, ``broadcasting.send_due()`` (what the server's background sender runs) to
time the delivery that follows. Every round starts from a fresh draft.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    import django

    django.setup()


def _create_users(count: int) -> list[int]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    users = get_user_model()._default_manager
    prefix = "bench-user-"
    have = users.filter(username__startswith=prefix).count()
    if have < count:
        started = time.perf_counter()
        if connection.vendor == "postgresql":
            table = get_user_model()._meta.db_table
            rows = io.StringIO()
            for i in range(have, count):
                rows.write(f"{prefix}{i:06d}\t!\t\t\t\tf\tf\tt\t2026-01-01 00:00:00+00\n")
            rows.seek(0)
            columns = (
                "username, password, first_name, last_name, email, is_superuser, is_staff, "
                "is_active, date_joined"
            )
            with (
                connection.cursor() as cursor,
                cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
            ):
                copy.write(rows.read())
        else:
            model = get_user_model()
            users.bulk_create(
                [model(username=f"{prefix}{i:06d}", password="!") for i in range(have, count)],
                batch_size=5000,
            )
        print(f"created {count - have} users in {time.perf_counter() - started:.1f} s")
    return list(
        users.filter(username__startswith=prefix)
        .order_by("pk")
        .values_list("pk", flat=True)[:count]
    )


def _draft(user_ids: list[int], author) -> object:
    from notifications.models import Broadcast

    broadcast = Broadcast.objects.create(
        title="Bench: to 100,000 named users", audience=Broadcast.Audience.USERS, created_by=author
    )
    through = Broadcast.users.through
    through.objects.bulk_create(
        [through(broadcast_id=broadcast.pk, user_id=uid) for uid in user_ids], batch_size=10_000
    )
    return broadcast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _setup()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from notifications import broadcasting

    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    call_command("migrate", verbosity=0)
    user_ids = _create_users(args.users)
    users = get_user_model()._default_manager
    staff = users.filter(username="bench-staff").first() or users.create_superuser(
        "bench-staff", "staff@example.com", "bench-staff-pw"
    )
    client = Client()
    client.force_login(staff)

    results: dict[str, list[float]] = {"action": [], "notify": [], "background": []}
    for _ in range(args.repeat):
        broadcast = _draft(user_ids, staff)
        started = time.perf_counter()
        response = client.post(
            "/admin/notifications/broadcast/",
            {"action": "send_selected", "_selected_action": [broadcast.pk]},
        )
        results["action"].append(time.perf_counter() - started)
        assert response.status_code == 302, response.status_code
        started = time.perf_counter()
        [outcome] = broadcasting.send_due()
        results["background"].append(time.perf_counter() - started)
        assert outcome.sent, outcome

        started = time.perf_counter()
        response = client.post(
            "/admin/auth/user/?username__startswith=bench-user-",
            {
                "action": "notify_selected_users",
                "select_across": "1",
                "index": "0",
                "_selected_action": [str(user_ids[0])],
                "apply": "1",
                "title": "Bench: notify selected users",
                "level": "info",
            },
        )
        results["notify"].append(time.perf_counter() - started)
        assert response.status_code == 302, response.content[:500]
        started = time.perf_counter()
        [outcome] = broadcasting.send_due()
        results["background"].append(time.perf_counter() - started)
        assert outcome.sent and str(args.users) in outcome.detail, outcome

    for name, label in [
        ("action", "admin POST, action 'Send selected broadcasts now'"),
        ("notify", "admin POST, user admin 'Notify selected users', all selected"),
        ("background", "background send (send_due: Event + 100,000 Recipient rows)"),
    ]:
        values = results[name]
        print(
            f"{label}: median {statistics.median(values) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms over {len(values)} runs ({args.users} users)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
