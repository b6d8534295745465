"""group_key: notifications with the same key collapse into one feed row with live counts."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from notifications import notify
from notifications.realtime import frames
from notifications.selectors import unread_count

pytestmark = pytest.mark.django_db

API = "/api/v1/inbox"


@pytest.fixture
def people(make_user):
    return make_user("alice"), make_user("ann"), make_user("bob"), make_user("cy")


@pytest.fixture
def api(people):
    client = Client()
    client.force_login(people[0])
    return client


def test_group_key_is_validated_and_in_the_frame(people):
    alice, ann, *_ = people
    with pytest.raises(ValueError, match="group_key"):
        notify(alice, "x", group_key="")
    with pytest.raises(ValueError, match="group_key"):
        notify(alice, "x", group_key="k" * 201)
    event = notify(alice, "Ann commented", actor=ann, group_key="post-7")
    frame = frames.notification(event, read=False, replay=False)
    assert frame["group_key"] == "post-7" and frame["actor"] == "ann"
    plain = frames.notification(notify(alice, "plain"), read=False, replay=False)
    assert "group_key" not in plain and "actor" not in plain  # v1 frames as they were


def test_feed_collapses_a_group_into_its_newest_row(api, people):
    alice, ann, bob, cy = people
    first = notify(alice, "Ann commented", actor=ann, group_key="post-7")
    other = notify(alice, "Unrelated")
    notify(alice, "Bob commented", actor=bob, group_key="post-7")
    newest = notify(alice, "Cy commented", actor=cy, group_key="post-7")
    answer = api.get(API, {"group": "1"}).json()
    assert [row["id"] for row in answer["items"]] == [newest.id, other.id]
    assert answer["items"][0]["group"] == {
        "key": "post-7",
        "count": 3,
        "unread": 3,
        "actors": ["cy", "bob", "ann"],
        "actor_count": 3,
    }
    assert "group" not in answer["items"][1]
    # Without group=1 every event is its own row.
    assert len(api.get(API).json()["items"]) == 4

    # Reading the group reads all of it.
    response = api.post(
        f"{API}/read", json.dumps({"group_key": "post-7"}), content_type="application/json"
    )
    assert response.json() == {"unread": 1}
    assert unread_count(alice) == 1
    summary = api.get(API, {"group": "1", "group_key": "post-7"}).json()["items"]
    assert [row["id"] for row in summary] == [newest.id]
    assert summary[0]["group"]["unread"] == 0 and summary[0]["read"] is True
    assert first.id < newest.id


def test_group_rows_page_and_archive(api, people):
    alice, ann, *_ = people
    grouped = [notify(alice, f"c{i}", actor=ann, group_key="k") for i in range(3)]
    loose = [notify(alice, f"n{i}") for i in range(3)]
    page = api.get(API, {"group": "1", "limit": 2}).json()
    assert [row["id"] for row in page["items"]] == [loose[2].id, loose[1].id]
    rest = api.get(API, {"group": "1", "limit": 2, "before": page["next"]}).json()
    assert [row["id"] for row in rest["items"]] == [loose[0].id, grouped[2].id]
    assert rest["next"] is None
    response = api.post(
        f"{API}/archive", json.dumps({"group_key": "k"}), content_type="application/json"
    )
    assert sorted(response.json()["ids"]) == [e.id for e in grouped]
    assert [row["id"] for row in api.get(API, {"group": "1"}).json()["items"]] == [
        e.id for e in reversed(loose)
    ]


def test_another_users_group_is_not_visible(api, people, make_user):
    alice, ann, bob, _ = people
    notify(bob, "Bob's own", actor=ann, group_key="shared-key")
    mine = notify(alice, "Mine", actor=ann, group_key="shared-key")
    row = api.get(API, {"group": "1"}).json()["items"][0]
    assert row["id"] == mine.id and row["group"]["count"] == 1
    response = api.post(
        f"{API}/read", json.dumps({"group_key": "shared-key"}), content_type="application/json"
    )
    assert response.json() == {"unread": 0}
    assert unread_count(bob) == 1


def test_notify_many_takes_group_key(api, people):
    from notifications import Notification, notify_many

    alice, ann, bob, _ = people
    events = notify_many(
        [
            Notification(alice, "a", actor=ann, group_key="batch"),
            Notification(alice, "b", actor=bob, group_key="batch"),
        ]
    )
    assert [e.group_key for e in events] == ["batch", "batch"]
    with pytest.raises(ValueError, match="group_key"):
        notify_many([Notification(alice, "c", group_key=7)])
    row = api.get(API, {"group": "1"}).json()["items"][0]
    assert row["group"]["count"] == 2 and row["group"]["actors"] == ["bob", "ann"]
