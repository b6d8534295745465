"""Settings of the long-poll baseline: the project's (``NOTIFICATIONS`` overrides of
``--notifications`` included, see tuned_settings.py), with ``/longpoll/`` added to the URLs.

Two changes, both what Django's documentation asks of an async view under ASGI:

- ``CONN_MAX_AGE = 0``: Django opens a database connection per request under ASGI (each
  request's ``sync_to_async`` calls run on a thread of its own), and its documentation says to
  turn persistent connections off there; with them on, each request's connection would be
  left to the garbage collector instead of being closed at the end of the request.
- ``whitenoise`` out of ``MIDDLEWARE`` (unless ``BENCH_LONGPOLL_WHITENOISE=1``): it is the one
  sync-only middleware of the project, and a single sync-only middleware makes Django run the
  whole request, wait included, through ``async_to_sync`` on a thread of its own: one OS
  thread held per waiting request. It adds no header to a JSON answer.
"""

import os

from .tuned_settings import *  # noqa: F403
from .tuned_settings import DATABASES, MIDDLEWARE

ROOT_URLCONF = "bench.servers.longpoll"
DATABASES["default"]["CONN_MAX_AGE"] = 0
if os.environ.get("BENCH_LONGPOLL_WHITENOISE") != "1":
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise.")]
