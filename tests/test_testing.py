"""The test kit shipped for users: capture_notifications and the notifications_outbox fixture."""

from __future__ import annotations

import pytest
from django.db import transaction

from notifications import notify
from notifications.testing import capture_notifications

pytestmark = pytest.mark.django_db


def test_capture_collects_committed_events(make_user):
    alice = make_user("alice")
    with capture_notifications() as outbox:
        first = notify(alice, "one")
        notify("everyone", "two")
    assert [event.title for event in outbox] == ["one", "two"]
    assert outbox[0].id == first.id


def test_capture_ignores_rolled_back_notifications(make_user):
    alice = make_user("alice")
    with capture_notifications() as outbox:
        try:
            with transaction.atomic():
                notify(alice, "rolled back")
                raise RuntimeError
        except RuntimeError:
            pass
        notify(alice, "kept")
    assert [event.title for event in outbox] == ["kept"]


def test_outbox_fixture(make_user, notifications_outbox):
    alice = make_user("alice")
    notify(alice, "hello")
    assert [event.title for event in notifications_outbox] == ["hello"]
    with transaction.atomic():
        notify(alice, "pending")
        assert len(notifications_outbox) == 1  # not committed yet
    assert len(notifications_outbox) == 2


@pytest.mark.django_db(transaction=True)
def test_capture_outside_a_test_transaction(make_user):
    alice = make_user("alice")
    with capture_notifications() as outbox:
        notify(alice, "autocommit")
        with transaction.atomic():
            notify(alice, "in a transaction")
            assert [event.title for event in outbox] == ["autocommit"]
    assert [event.title for event in outbox] == ["autocommit", "in a transaction"]
