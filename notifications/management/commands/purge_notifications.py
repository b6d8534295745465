"""``manage.py purge_notifications --older-than 90d``: delete old notifications in batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from notifications import retention


class Command(BaseCommand):
    help = (
        "Delete notifications older than an age (90d, 12h, 30m; default: the RETENTION "
        "setting), in short transactions. Replays from cursors in the deleted range answer "
        "complete: false."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help="a whole number with d (days), h (hours) or m (minutes); "
            'default: NOTIFICATIONS["RETENTION"]',
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            help="events deleted per transaction (default 2000)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar, even on a terminal"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = self._age(options["older_than"])
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        cutoff = timezone.now() - age
        total, _ = retention.purge_candidates(cutoff)
        if options["dry_run"]:
            self.stdout.write(
                f"would delete {total} notifications created before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
            )
            return
        bar = None
        if total and not options["no_progress"] and self.stdout.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="event", desc="purging", file=self.stdout._out)
        try:
            result = retention.purge(
                older_than=age,
                batch_size=options["batch_size"],
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(
            f"deleted={result.deleted} purged_through={result.purged_through} "
            f"cutoff={result.cutoff.isoformat(timespec='seconds')} seconds={result.seconds:.2f}"
        )

    def _age(self, value: str | None) -> timedelta:
        try:
            if value is not None:
                return retention.parse_age(value)
            configured = retention.configured_age()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if configured is None:
            raise CommandError(
                'give --older-than (for example 90d) or set NOTIFICATIONS["RETENTION"]'
            )
        return configured
