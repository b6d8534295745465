"""Staff compose and send broadcasts in the admin; connected recipients see them live."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.test import AsyncClient

from notifications.models import Broadcast, Event

pytestmark = pytest.mark.django_db(transaction=True)

ADD_URL = "/admin/notifications/broadcast/add/"


def form(**fields):
    return {
        "title": "Maintenance tonight",
        "body": "From 22:00",
        "url": "/status",
        "level": "warning",
        "audience": "everyone",
        "send_now": "on",
        **fields,
    }


@pytest.mark.asyncio
async def test_broadcast_from_admin_reaches_connected_clients(connect, amake_user):
    staff = await amake_user("root", is_staff=True, is_superuser=True)
    alice = await amake_user("alice")
    sock, anon = await connect(alice), await connect()
    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.post(ADD_URL, form())
    assert response.status_code == 302, response.content[:2000]
    event = await db(Event.objects.get)()
    for s in (sock, anon):
        frame = await s.expect("notification")
        assert (frame["id"], frame["title"], frame["level"]) == (
            event.id,
            "Maintenance tonight",
            "warning",
        )
    broadcast = await db(Broadcast.objects.select_related("sent_by").get)()
    assert broadcast.sent_by == staff and broadcast.event_id == event.id
    assert (
        await db(LogEntry.objects.filter(object_id=str(broadcast.pk)).count)() == 2
    )  # added, sent


def test_group_broadcast_and_draft(client, make_user):
    staff = make_user("root", is_staff=True, is_superuser=True)
    member = make_user("member")
    group = Group.objects.create(name="editors")
    member.groups.add(group)
    client.force_login(staff)
    # A group audience with no group is refused by the form.
    response = client.post(ADD_URL, form(audience="groups"))
    assert response.status_code == 200 and b"choose at least one group" in response.content
    # A draft is stored, shows its audience size, and is sent by the action.
    response = client.post(ADD_URL, form(audience="groups", groups=[group.pk], send_now=""))
    assert response.status_code == 302
    broadcast = Broadcast.objects.get()
    assert broadcast.sent_at is None and Event.objects.count() == 0
    page = client.get(f"/admin/notifications/broadcast/{broadcast.pk}/change/")
    assert b"Recipients now" in page.content
    response = client.post(
        "/admin/notifications/broadcast/",
        {"action": "send_selected", "_selected_action": [broadcast.pk]},
    )
    assert response.status_code == 302
    broadcast.refresh_from_db()
    assert broadcast.event.recipient_count == 1
    page = client.get(f"/admin/notifications/broadcast/{broadcast.pk}/change/")
    assert b"0 of 1 read (0.0%)" in page.content
    assert b"member" in page.content  # not read by


def test_admin_pages_render(client, make_user):
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    for url in [
        "/admin/notifications/event/",
        "/admin/notifications/topic/",
        "/admin/notifications/topic/add/",
        "/admin/notifications/broadcast/",
        ADD_URL,
    ]:
        assert client.get(url).status_code == 200, url
