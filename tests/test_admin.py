"""The broadcast console in the admin: compose, send now, schedule, cancel, duplicate, test to
oneself, dry run, read-only sent broadcasts, follow-up and CSV, and the send permission on
every path that sends."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission
from django.test import AsyncClient, override_settings
from django.utils import timezone

from notifications import broadcasting, presence
from notifications.models import Broadcast, Event, ReadMark

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/admin/notifications/broadcast/"
ADD_URL = BASE + "add/"


def form(**fields):
    return {
        "title": "Maintenance tonight",
        "body": "From 22:00",
        "url": "/status",
        "level": "warning",
        "audience": "everyone",
        **fields,
    }


def perms(*codenames: str) -> list[Permission]:
    return list(
        Permission.objects.filter(content_type__app_label="notifications").filter(
            codename__in=codenames
        )
    )


@pytest.fixture
def sender(make_user):
    """Staff who may compose and send (not a superuser)."""
    user = make_user("sender", is_staff=True)
    user.user_permissions.set(
        perms("add_broadcast", "change_broadcast", "view_broadcast", "send_broadcast")
    )
    return user


@pytest.fixture
def composer(make_user):
    """Staff who may write drafts but not send."""
    user = make_user("composer", is_staff=True)
    user.user_permissions.set(perms("add_broadcast", "change_broadcast", "view_broadcast"))
    return user


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def log_messages(broadcast: Broadcast) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(broadcast.pk))
        .order_by("pk")
        .values_list("change_message", flat=True)
    )


# Send now ----------------------------------------------------------------------------------------


async def test_send_now_reaches_connected_clients(connect, amake_user):
    staff = await amake_user("root", is_staff=True, is_superuser=True)
    alice = await amake_user("alice")
    sock, anon = await connect(alice), await connect()
    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.post(ADD_URL, form(_send_now="Send now"))
    assert response.status_code == 302, response.content[:2000]
    for s in (sock, anon):
        frame = await s.expect("notification")
        assert (frame["title"], frame["level"]) == ("Maintenance tonight", "warning")
    broadcast = await db(Broadcast.objects.select_related("sent_by", "event").get)()
    assert broadcast.status == Broadcast.Status.SENT and broadcast.sent_by == staff
    assert broadcast.event.id == frame["id"]
    logged = await db(log_messages)(broadcast)
    assert sorted(logged) == ["Sent to 2 recipients.", '[{"added": {}}]']


async def test_send_now_to_many_named_users_goes_through_the_background_sender(
    connect, amake_user, settings
):
    settings.NOTIFICATIONS = {"SEND_INLINE_MAX_USERS": 1}
    staff = await amake_user("root", is_staff=True, is_superuser=True)
    alice, bob = await amake_user("alice"), await amake_user("bob")
    sock = await connect(alice)  # starts the hub, and with it the sender
    client = AsyncClient()
    await client.aforce_login(staff)
    fields = form(audience="users", users=[alice.pk, bob.pk], _send_now="Send now")
    response = await client.post(ADD_URL, fields, follow=True)
    assert "“Maintenance tonight” is being sent to 2 users in the background; its status " in (
        " ".join(str(m) for m in response.context["messages"])
    )
    frame = await sock.expect("notification", timeout=5)  # sent by the hub's sender
    broadcast = await db(Broadcast.objects.select_related("event").get)()
    assert broadcast.status == Broadcast.Status.SENT and broadcast.event.id == frame["id"]
    assert broadcast.event.recipient_count == 2
    logged = await db(log_messages)(broadcast)
    assert "Sent now: 2 named users, handed to the sender." in logged
    assert "Sent to 2 recipients." in logged  # by the sender, on the staff member's behalf


def test_send_now_to_many_named_users_only_queues_in_the_request(client, sender, make_user):
    users = [make_user(f"u{i}") for i in range(3)]
    client.force_login(sender)
    with override_settings(NOTIFICATIONS={"SEND_INLINE_MAX_USERS": 2}):
        response = client.post(
            ADD_URL, form(audience="users", users=[u.pk for u in users], _send_now="Send now")
        )
    assert response.status_code == 302
    broadcast = Broadcast.objects.get()
    # The request updated one row; the server's background sender sends.
    assert broadcast.status == Broadcast.Status.SCHEDULED and broadcast.scheduled_by == sender
    assert Event.objects.count() == 0
    [outcome] = broadcasting.send_due()
    assert outcome.sent
    broadcast.refresh_from_db()
    assert broadcast.status == Broadcast.Status.SENT and broadcast.sent_by == sender


# Drafts, actions and what they skip ------------------------------------------------------------


def test_group_draft_then_send_action_and_skips(client, sender, make_user):
    member = make_user("member")
    group = Group.objects.create(name="editors")
    member.groups.add(group)
    client.force_login(sender)
    response = client.post(ADD_URL, form(audience="groups"))
    assert response.status_code == 200 and b"choose at least one group" in response.content
    response = client.post(ADD_URL, form(audience="groups", groups=[group.pk], _save="Save"))
    assert response.status_code == 302
    broadcast = Broadcast.objects.get()
    assert broadcast.status == Broadcast.Status.DRAFT and Event.objects.count() == 0
    action = {"action": "send_selected", "_selected_action": [broadcast.pk]}
    response = client.post(BASE, action, follow=True)
    assert "1 sent." in messages_of(response)
    broadcast.refresh_from_db()
    assert broadcast.event.recipient_count == 1
    response = client.post(BASE, action, follow=True)
    assert "0 sent; 1 skipped: already sent." in messages_of(response)
    page = client.get(f"{BASE}{broadcast.pk}/change/")
    assert b"0 of 1 read (0.0%)" in page.content
    assert b"member" in page.content  # not read by


def test_sent_broadcast_is_read_only(client, sender):
    client.force_login(sender)
    client.post(ADD_URL, form(_send_now="Send now"))
    broadcasting.send_due()
    broadcast = Broadcast.objects.get()
    page = client.get(f"{BASE}{broadcast.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="_send_now"' not in html
    assert 'name="_continue"' not in html and "Duplicate as a draft" in html
    response = client.post(f"{BASE}{broadcast.pk}/change/", form(title="Changed", _save="Save"))
    assert response.status_code == 403
    broadcast.refresh_from_db()
    assert broadcast.title == "Maintenance tonight"


def test_schedule_validation_cancel_and_send_on_time(client, sender):
    client.force_login(sender)
    response = client.post(ADD_URL, form(_schedule="Schedule"))
    assert b"choose when to send it" in response.content
    past = (timezone.now() - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    response = client.post(
        ADD_URL, form(_schedule="Schedule", send_at_0=past[:10], send_at_1=past[11:])
    )
    assert b"choose a time in the future" in response.content
    at = timezone.now() + timedelta(hours=1)
    when = {"send_at_0": at.strftime("%Y-%m-%d"), "send_at_1": at.strftime("%H:%M:%S")}
    early = at - timedelta(minutes=1)
    response = client.post(
        ADD_URL,
        form(
            _schedule="Schedule",
            expires_at_0=early.strftime("%Y-%m-%d"),
            expires_at_1=early.strftime("%H:%M:%S"),
            **when,
        ),
    )
    assert b"it would expire before it is sent" in response.content
    assert Broadcast.objects.count() == 0
    response = client.post(ADD_URL, form(_schedule="Schedule", **when))
    assert response.status_code == 302
    broadcast = Broadcast.objects.get()
    assert broadcast.status == Broadcast.Status.SCHEDULED
    assert broadcasting.send_due() == []  # not due yet
    page = client.get(f"{BASE}{broadcast.pk}/change/").content.decode()
    assert "Cancel the scheduled send" in page and 'name="_save"' not in page
    response = client.post(f"{BASE}{broadcast.pk}/cancel/", follow=True)
    assert f"“{broadcast}” cancelled: it is a draft again." in messages_of(response)
    broadcast.refresh_from_db()
    assert broadcast.status == Broadcast.Status.DRAFT
    response = client.post(f"{BASE}{broadcast.pk}/cancel/", follow=True)
    assert f"“{broadcast}” was not cancelled: a draft, not scheduled." in messages_of(response)
    response = client.post(f"{BASE}{broadcast.pk}/change/", form(_schedule="Schedule", **when))
    assert response.status_code == 302
    [outcome] = broadcasting.send_due(now=at + timedelta(seconds=1))
    assert outcome.sent
    broadcast.refresh_from_db()
    assert broadcast.status == Broadcast.Status.SENT
    assert any(m.startswith("Scheduled for") for m in log_messages(broadcast))
    assert "Cancelled the scheduled send; a draft again." in log_messages(broadcast)


def test_cancel_action_says_what_it_skipped(client, sender):
    client.force_login(sender)
    at = timezone.now() + timedelta(hours=1)
    when = {"send_at_0": at.strftime("%Y-%m-%d"), "send_at_1": at.strftime("%H:%M:%S")}
    client.post(ADD_URL, form(title="later", _schedule="Schedule", **when))
    client.post(ADD_URL, form(title="draft", _save="Save"))
    ids = list(Broadcast.objects.values_list("pk", flat=True))
    response = client.post(
        BASE, {"action": "cancel_selected", "_selected_action": ids}, follow=True
    )
    assert "1 cancelled (drafts again); 1 skipped: a draft, not scheduled." in messages_of(response)
    assert set(Broadcast.objects.values_list("status", flat=True)) == {"draft"}


def test_scheduled_send_fails_visibly_when_the_author_lost_the_permission(client, make_user):
    senders = Group.objects.create(name="senders")
    senders.permissions.set(
        perms("add_broadcast", "change_broadcast", "view_broadcast", "send_broadcast")
    )
    author = make_user("author", is_staff=True)
    author.groups.add(senders)
    client.force_login(author)
    at = timezone.now() + timedelta(minutes=5)
    when = {"send_at_0": at.strftime("%Y-%m-%d"), "send_at_1": at.strftime("%H:%M:%S")}
    assert client.post(ADD_URL, form(_schedule="Schedule", **when)).status_code == 302
    author.groups.remove(senders)  # loses every permission, sending included
    [outcome] = broadcasting.send_due(now=at + timedelta(seconds=1))
    assert not outcome.sent
    broadcast = Broadcast.objects.get()
    assert broadcast.status == Broadcast.Status.FAILED and Event.objects.count() == 0
    assert broadcast.failure_reason == (
        "sent on behalf of author, who does not have the permission "
        "notifications.send_broadcast (any more)"
    )
    assert log_messages(broadcast)[-1] == f"Not sent: {broadcast.failure_reason}"
    superuser = make_user("root", is_staff=True, is_superuser=True)
    client.force_login(superuser)
    page = client.get(f"{BASE}{broadcast.pk}/change/").content.decode()
    assert "Why it failed" in page and "does not have the permission" in page
    listing = client.get(BASE).content.decode()
    assert "Failed" in listing


def test_duplicate_view_and_action(client, sender, make_user):
    group = Group.objects.create(name="editors")
    bob = make_user("bob")
    client.force_login(sender)
    client.post(ADD_URL, form(audience="users", users=[bob.pk], _send_now="Send now"))
    broadcasting.send_due()
    original = Broadcast.objects.get()
    response = client.post(f"{BASE}{original.pk}/duplicate/")
    copy = Broadcast.objects.exclude(pk=original.pk).get()
    assert response.status_code == 302 and response["Location"].endswith(f"/{copy.pk}/change/")
    assert copy.status == Broadcast.Status.DRAFT and copy.created_by == sender
    assert list(copy.users.all()) == [bob] and copy.title == original.title
    original.groups.add(group)
    response = client.post(
        BASE, {"action": "duplicate_selected", "_selected_action": [original.pk]}, follow=True
    )
    assert "1 duplicated as drafts." in messages_of(response)
    assert Broadcast.objects.filter(groups=group).count() == 2


def test_send_a_test_to_me_reaches_only_the_requester(client, sender, make_user):
    make_user("alice")
    client.force_login(sender)
    response = client.post(BASE + "send-test/", form(title="Try <b>me</b>"))
    assert response.status_code == 200 and response.json()["sent"] is True
    event = Event.objects.get()
    assert event.title == "[Test] Try <b>me</b>" and event.recipient_count == 1
    assert list(event.recipients.values_list("user_id", flat=True)) == [sender.pk]
    assert Broadcast.objects.count() == 0  # not recorded as any broadcast's send
    assert LogEntry.objects.filter(user=sender, change_message__startswith="Sent a test").exists()
    response = client.post(BASE + "send-test/", form(title=""))
    assert response.status_code == 400


def test_dry_run_counts_recipients_and_who_is_online(client, sender, make_user):
    group = Group.objects.create(name="editors")
    ann, ben = make_user("ann"), make_user("ben")
    for user in (ann, ben):
        user.groups.add(group)
    make_user("outsider")
    presence.report(presence.ProcessReport("p1", users=[ann.pk], anonymous=3, connections=4))
    client.force_login(sender)
    url = BASE + "dry-run/"
    answer = client.post(url, form(audience="groups", groups=[group.pk])).json()
    assert answer == {"recipients": 2, "online": 1, "anonymous_connections": None}
    answer = client.post(url, form(audience="everyone")).json()
    assert answer == {"recipients": 4, "online": 1, "anonymous_connections": 3}
    assert client.post(url, form(audience="groups")).json() == {
        "error": "choose at least one of the groups"
    }
    answer = client.post(url, form(audience="users", users=[ben.pk])).json()
    assert answer["recipients"] == 1 and answer["online"] == 0
    moderate = Permission.objects.get(codename="change_topic")
    ben.user_permissions.add(moderate)
    answer = client.post(url, form(audience="permission", permission=moderate.pk)).json()
    assert answer["recipients"] == 1 and answer["online"] == 0  # ben (no superuser here)
    assert Broadcast.objects.count() == 0 and Event.objects.count() == 0


def test_dry_run_needs_the_right_to_compose(client, make_user):
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.set(perms("view_broadcast"))
    client.force_login(viewer)
    assert client.post(BASE + "dry-run/", form()).status_code == 403
    assert client.post(BASE + "send-test/", form()).status_code == 403
    outsider = make_user("outsider")  # not staff: the admin sends it to the login page
    client.force_login(outsider)
    assert client.post(BASE + "dry-run/", form()).status_code == 302


def test_staff_without_send_permission_cannot_send_on_any_path(client, composer, sender):
    client.force_login(composer)
    page = client.get(ADD_URL).content.decode()
    assert 'name="_send_now"' not in page and 'name="_save"' in page
    assert "[data-console-test] { display: none; }" in page  # no "Send a test to me" either
    # The buttons: the draft is kept, and the refusal said.
    response = client.post(ADD_URL, form(_send_now="Send now"), follow=True)
    assert (
        "“Maintenance tonight” was saved as a draft, not sent: sending a broadcast needs the "
        "permission notifications.send_broadcast" in messages_of(response)
    )
    at = timezone.now() + timedelta(hours=1)
    when = {"send_at_0": at.strftime("%Y-%m-%d"), "send_at_1": at.strftime("%H:%M:%S")}
    response = client.post(ADD_URL, form(title="later", _schedule="Schedule", **when), follow=True)
    assert any("not sent: sending a broadcast needs" in m for m in messages_of(response))
    assert set(Broadcast.objects.values_list("status", flat=True)) == {"draft"}
    Broadcast.objects.filter(title="later").delete()
    draft = Broadcast.objects.get()
    client.post(f"{BASE}{draft.pk}/change/", form(_send_now="1"))
    client.post(f"{BASE}{draft.pk}/change/", form(send_now="on"))  # the old checkbox
    # The action is not offered, and posting it anyway sends nothing.
    listing = client.get(BASE).content.decode()
    assert "send_selected" not in listing and "cancel_selected" in listing
    client.post(BASE, {"action": "send_selected", "_selected_action": [draft.pk]})
    # The test send.
    response = client.post(BASE + "send-test/", form())
    assert response.status_code == 403
    assert "notifications.send_broadcast" in response.json()["error"]
    draft.refresh_from_db()
    assert draft.status == Broadcast.Status.DRAFT and Event.objects.count() == 0
    # Scheduling on the composer's behalf through the service is refused as well.
    with pytest.raises(Exception, match="send_broadcast"):
        broadcasting.schedule(draft, by=composer)
    # The background sender acting for a user without the permission fails the send.
    Broadcast.objects.filter(pk=draft.pk).update(
        status="scheduled", send_at=timezone.now(), scheduled_by=composer
    )
    [outcome] = broadcasting.send_due()
    assert not outcome.sent and Event.objects.count() == 0


def test_exactly_once_claims(sender):
    broadcast = Broadcast.objects.create(title="once", created_by=sender)
    now = timezone.now()
    broadcasting.schedule(broadcast, by=sender, at=now)
    assert broadcasting._claim(now) == [broadcast.pk]
    assert broadcasting._claim(now) == []  # a second process finds nothing to claim
    # A claim whose process died (no send committed) is taken again after the timeout.
    later = now + timedelta(seconds=61)
    assert broadcasting._claim(later) == [broadcast.pk]
    assert broadcasting.send_claimed(broadcast.pk).sent
    assert broadcasting._claim(later + timedelta(seconds=61)) == []
    assert Event.objects.count() == 1


# Follow-up ---------------------------------------------------------------------------------------


def test_follow_up_page_and_not_read_csv(client, sender, make_user):
    group = Group.objects.create(name="staffers")
    readers = [make_user(f"user{i}", email=f"u{i}@example.com") for i in range(3)]
    tricky = make_user("=cmd", email="@evil.example")
    for user in [*readers, tricky, sender]:
        user.groups.add(group)
    client.force_login(sender)
    client.post(ADD_URL, form(audience="groups", groups=[group.pk], _send_now="Send now"))
    broadcasting.send_due()
    broadcast = Broadcast.objects.get()
    ReadMark.objects.create(user=readers[0], event=broadcast.event)
    broadcasting.record_live_delivery(broadcast.event_id, users=2, anonymous=0, connections=3)
    page = client.get(f"{BASE}{broadcast.pk}/follow-up/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "5 users" in html  # recipients at send time (the sender is in the group)
    assert "Reach now" in html and "Recipients at send time" in html
    assert "Scheduled for" not in html  # sent at once
    assert "2 users had an open connection when it went out (3 connections" in html
    assert "1 of 5 (20.0%)" in html
    not_read = [u.get_username() for u in page.context["page"]]
    assert not_read == ["user1", "user2", "=cmd"]  # the sender is left out
    filtered = client.get(f"{BASE}{broadcast.pk}/follow-up/?q=user2")
    assert [u.get_username() for u in filtered.context["page"]] == ["user2"]
    response = client.get(f"{BASE}{broadcast.pk}/not-read.csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["id", "username", "email", "last_login"]
    assert [row[1:3] for row in rows[1:]] == [
        ["user1", "u1@example.com"],
        ["user2", "u2@example.com"],
        ["'=cmd", "'@evil.example"],  # no formulas in a spreadsheet
    ]
    assert "Exported who has not read it (CSV)." in log_messages(broadcast)


def test_follow_up_of_a_broadcast_to_everyone_says_how_visitors_count(client, sender):
    client.force_login(sender)
    client.post(ADD_URL, form(_send_now="Send now"))
    broadcasting.send_due()
    broadcast = Broadcast.objects.get()
    broadcasting.record_live_delivery(broadcast.event_id, users=1, anonymous=4, connections=5)
    html = client.get(f"{BASE}{broadcast.pk}/follow-up/").content.decode()
    assert 'plus <span data-figure="delivered-anonymous">4</span> anonymous connections' in html
    assert "they count as delivered connections, not as recipients" in html


def test_follow_up_needs_view_permission(client, sender, make_user):
    client.force_login(sender)
    client.post(ADD_URL, form(_send_now="Send now"))
    broadcasting.send_due()
    broadcast = Broadcast.objects.get()
    other = make_user("other", is_staff=True)
    client.force_login(other)
    assert client.get(f"{BASE}{broadcast.pk}/follow-up/").status_code == 403
    assert client.get(f"{BASE}{broadcast.pk}/not-read.csv").status_code == 403


def test_admin_pages_render(client, make_user):
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    for url in [
        "/admin/notifications/event/",
        "/admin/notifications/topic/",
        "/admin/notifications/topic/add/",
        BASE,
        ADD_URL,
    ]:
        assert client.get(url).status_code == 200, url


def test_read_timeline_is_cumulative_from_the_send(client, sender, make_user):
    from notifications import followup

    group = Group.objects.create(name="g")
    users = [make_user(f"r{i}") for i in range(3)]
    for user in users:
        user.groups.add(group)
    client.force_login(sender)
    client.post(ADD_URL, form(audience="groups", groups=[group.pk], _send_now="Send now"))
    broadcasting.send_due()
    broadcast = Broadcast.objects.get()
    sent = broadcast.sent_at
    for user, minutes in ((users[0], 7), (users[1], 21)):
        ReadMark.objects.create(
            user=user, event=broadcast.event, read_at=sent + timedelta(minutes=minutes)
        )
    points = followup.timeline(broadcast, now=sent + timedelta(minutes=30), recipients=3)
    assert [(p.read, p.percent) for p in points] == [
        (0, 0.0),  # 5 min
        (1, 33.3),  # 10
        (1, 33.3),  # 15
        (1, 33.3),  # 20
        (2, 66.7),  # 25
        (2, 66.7),  # 30
    ]


def test_cancel_and_duplicate_need_their_permissions(client, sender, make_user):
    client.force_login(sender)
    at = timezone.now() + timedelta(hours=1)
    when = {"send_at_0": at.strftime("%Y-%m-%d"), "send_at_1": at.strftime("%H:%M:%S")}
    client.post(ADD_URL, form(_schedule="Schedule", **when))
    broadcast = Broadcast.objects.get()
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.set(perms("view_broadcast"))
    client.force_login(viewer)
    page = client.get(f"{BASE}{broadcast.pk}/change/").content.decode()
    assert "Cancel the scheduled send" not in page and "Duplicate as a draft" not in page
    assert client.post(f"{BASE}{broadcast.pk}/cancel/").status_code == 403
    assert client.post(f"{BASE}{broadcast.pk}/duplicate/").status_code == 403
    assert client.get(f"{BASE}{broadcast.pk}/cancel/").status_code in (403, 405)
    broadcast.refresh_from_db()
    assert broadcast.status == Broadcast.Status.SCHEDULED and Broadcast.objects.count() == 1


def test_an_expired_broadcast_is_not_sent(client, sender):
    broadcast = Broadcast.objects.create(
        title="old", created_by=sender, expires_at=timezone.now() - timedelta(minutes=1)
    )
    client.force_login(sender)
    response = client.post(
        BASE, {"action": "send_selected", "_selected_action": [broadcast.pk]}, follow=True
    )
    assert "0 sent; 1 skipped: it has already expired." in messages_of(response)
    with pytest.raises(ValueError, match="expire before it is sent"):
        broadcasting.schedule(broadcast, by=sender)
    assert Event.objects.count() == 0
