"""``manage.py notifications_send_due``: send the broadcasts that are due, from cron or a worker.

Every server process already does this on its own (docs/admin.md); the command is for sites
whose admin runs where no ASGI server of this app runs, or to drain due broadcasts by hand.
It claims each broadcast as the servers do, so it never sends one twice beside them.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from notifications import broadcasting
from notifications.conf import notifications_settings


class Command(BaseCommand):
    help = "Send the scheduled broadcasts that are due (once, or in a loop with --loop)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help="keep looking every SCHEDULER_INTERVAL seconds until interrupted",
        )

    def handle(self, *args: Any, loop: bool = False, **options: Any) -> None:
        while True:
            for outcome in broadcasting.send_due():
                line = f"broadcast={outcome.broadcast_id} {outcome.detail}"
                if outcome.sent:
                    self.stdout.write(line)
                else:
                    self.stderr.write(f"{line} (failed)")
            if not loop:
                return
            time.sleep(notifications_settings.SCHEDULER_INTERVAL)
