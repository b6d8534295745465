"""The CPU cost of one structured log line (notifications/eventlog.py), off and on.

    PYTHONPATH=. .venv/bin/python -m bench.eventlog_cost [--lines 20000]

A micro-measurement in one process (``timeit`` of ``eventlog.emit("connect", ...)`` with the
project's JSON handler writing to /dev/null), not a load run: multiply by the lines per
handshake (``connect`` and ``close``) and the handshake rate to estimate the share of a core.
"""

from __future__ import annotations

import argparse
import logging
import os
import timeit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.test import override_settings

    from notifications import eventlog

    handler = logging.getLogger("notifications.events").handlers[0]
    handler.stream = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)

    def line() -> None:
        eventlog.emit("connect", conn="c1", user=1, client="127.0.0.1", cursor=5)

    off = timeit.timeit(line, number=args.lines) / args.lines
    with override_settings(NOTIFICATIONS={"JSON_LOGS": True}):
        on = timeit.timeit(line, number=args.lines) / args.lines
    per_second = 2000 * 2 * on
    print(
        f"off: {off * 1e6:.2f} us a call; on: {on * 1e6:.2f} us a line; at 2,000 handshakes/s "
        f"with connect and close lines: {per_second * 100:.1f} % of a core"
    )


if __name__ == "__main__":
    main()
