"""The project's settings with ``NOTIFICATIONS`` keys overridden from ``BENCH_NOTIFICATIONS``
(a JSON object), for diagnosis: ``python -m bench.run --notifications '{"KEY": value}'``
runs our servers with ``DJANGO_SETTINGS_MODULE=bench.servers.tuned_settings``."""

import json
import os

from project.settings import *  # noqa: F403
from project.settings import NOTIFICATIONS

NOTIFICATIONS = {**NOTIFICATIONS, **json.loads(os.environ.get("BENCH_NOTIFICATIONS", "{}"))}
