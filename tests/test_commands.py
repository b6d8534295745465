"""manage.py notify, in-process (arguments, output, errors)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from notifications.models import Event, Topic

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("notify", *args, stdout=out)
    return out.getvalue().strip()


def test_users(make_user):
    make_user("alice")
    make_user("bob")
    line = run(
        "--title",
        "Hi",
        "--body",
        "B",
        "--url",
        "/x",
        "--level",
        "warning",
        "--user",
        "alice",
        "bob",
    )
    event = Event.objects.get()
    assert line == f"id={event.id} recipients=2"
    assert (event.title, event.body, event.url, event.level) == ("Hi", "B", "/x", "warning")


def test_groups_everyone_and_topic(make_user):
    alice = make_user("alice")
    staff_group = Group.objects.create(name="ops")
    alice.groups.add(staff_group)
    topic = Topic.objects.create(name="News", slug="news")
    topic.users.add(alice)
    assert run("--title", "g", "--group", "ops").endswith("recipients=1")
    assert run("--title", "e", "--everyone").endswith("recipients=1")
    assert run("--title", "t", "--topic", "news").endswith("recipients=1")
    labelled = run("--title", "l", "--topic", "news", "--user", "alice")
    event = Event.objects.get(pk=int(labelled.split()[0][3:]))
    assert event.topic == topic and not event.to_topic


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "alice", "nobody"], "unknown user(s): nobody"),
        (["--group", "nope"], "unknown group(s): nope"),
        (["--topic", "nope", "--everyone"], "no topic with slug 'nope'"),
        ([], "choose an audience"),
        (["--everyone", "--url", "javascript:x"], "url must be relative"),
    ],
)
def test_errors_store_nothing(make_user, args, message):
    make_user("alice")
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run("--title", "x", *args)
    assert Event.objects.count() == 0


def test_repeated_user_options_add_up(make_user):
    make_user("alice")
    make_user("bob")
    assert run("--title", "x", "--user", "alice", "--user", "bob").endswith("recipients=2")
