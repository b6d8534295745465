"""A test kit for sites that use notifications, like ``django.core.mail.outbox``.

::

    from notifications.testing import capture_notifications

    def test_signup_sends_welcome(client):
        with capture_notifications() as outbox:
            client.post("/signup/", {...})
        assert [event.title for event in outbox] == ["Welcome!"]

With pytest (pytest-django), add ``pytest_plugins = ["notifications.testing"]`` to
``conftest.py`` and use the ``notifications_outbox`` fixture; it runs the test with a
transactional database so that ``on_commit`` fires exactly as in production.

Only notifications whose transaction commits are captured. Inside a test case's
transaction (Django's TestCase, pytest-django's ``db``), the ``on_commit`` callbacks registered
in the block run when it ends, as a commit would run them, and those of a rolled-back
savepoint never do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections
from django.test import TestCase

from .models import Event
from .signals import notification_sent


@contextmanager
def capture_notifications(using: str = "default") -> Iterator[list[Event]]:
    """Collect the events sent (committed) inside the block, in order."""
    outbox: list[Event] = []

    def receiver(sender: Any, event: Event, **kwargs: Any) -> None:
        outbox.append(event)

    notification_sent.connect(receiver, weak=False)
    try:
        if connections[using].in_atomic_block:
            with TestCase.captureOnCommitCallbacks(using=using, execute=True):
                yield outbox
        else:
            yield outbox
    finally:
        notification_sent.disconnect(receiver)


try:
    import pytest
except ImportError:  # pytest is optional for users of the package
    pass
else:

    @pytest.fixture
    def notifications_outbox(transactional_db: None) -> Iterator[list[Event]]:
        """The events sent (committed) during the test, filled as they commit."""
        with capture_notifications() as outbox:
            yield outbox
