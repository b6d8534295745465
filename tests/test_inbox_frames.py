"""The inbox-state extension of the WebSocket protocol (``?ext=inbox``, docs/client.md):
every tab hears about reads, unreads, seen, archive and preferences; v1 clients hear none."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as db

from notifications import notify, services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

EXT = "/ws/notifications/?ext=inbox"


async def test_state_frames_reach_every_extension_socket(connect, amake_user):
    alice = await amake_user("alice")
    one = await db(notify)(alice, "one")
    two = await db(notify)(alice, "two")
    tab = await connect(alice, path=EXT)
    other = await connect(alice, path=EXT)

    await db(services.mark_read)(alice, [one.id])
    for sock in (tab, other):
        assert await sock.expect("read_state") == {
            "type": "read_state",
            "ids": [one.id],
            "read": True,
        }
        assert await sock.expect("unread") == {"type": "unread", "count": 1}

    await db(services.mark_unread)(alice, [one.id])
    for sock in (tab, other):
        assert await sock.expect("read_state") == {
            "type": "read_state",
            "ids": [one.id],
            "read": False,
        }
        assert await sock.expect("unread") == {"type": "unread", "count": 2}

    await db(services.mark_seen)(alice)
    for sock in (tab, other):
        assert await sock.expect("seen") == {"type": "seen", "through": two.id}

    await db(services.archive)(alice, [two.id])
    for sock in (tab, other):
        assert await sock.expect("archived") == {
            "type": "archived",
            "ids": [two.id],
            "archived": True,
        }
        assert await sock.expect("read_state") == {
            "type": "read_state",
            "ids": [two.id],
            "read": True,
        }
        assert await sock.expect("unread") == {"type": "unread", "count": 1}

    await db(services.mark_all_read)(alice)
    for sock in (tab, other):
        assert await sock.expect("read_state") == {
            "type": "read_state",
            "read": True,
            "through": two.id,
        }
        assert await sock.expect("unread") == {"type": "unread", "count": 0}

    await db(services.update_preferences)(alice, toast_levels=["error"])
    for sock in (tab, other):
        assert await sock.expect("preferences") == {
            "type": "preferences",
            "language": "",
            "muted_topics": [],
            "toast_levels": ["error"],
            "desktop_levels": ["info", "success", "warning", "error"],
        }


async def test_v1_sockets_and_other_users_get_no_extension_frames(connect, amake_user):
    alice = await amake_user("alice")
    bob = await amake_user("bob")
    event = await db(notify)(alice, "one")
    plain = await connect(alice)
    bobs = await connect(bob, path=EXT)
    await db(services.mark_seen)(alice)
    await db(services.mark_read)(alice, [event.id])
    assert await plain.expect("unread") == {"type": "unread", "count": 0}
    assert await plain.nothing()
    assert await bobs.nothing()


async def test_read_over_the_socket_tells_the_other_tabs_which_ids(connect, amake_user):
    alice = await amake_user("alice")
    event = await db(notify)(alice, "one")
    tab = await connect(alice, path=EXT)
    other = await connect(alice, path=EXT)
    await tab.send({"type": "read", "ids": [event.id], "ref": 1})
    frames = [await tab.receive(), await tab.receive()]
    assert {"type": "unread", "count": 0, "ref": 1} in frames
    assert {"type": "read_state", "ids": [event.id], "read": True} in frames
    assert await other.expect("read_state") == {
        "type": "read_state",
        "ids": [event.id],
        "read": True,
    }
    assert await other.expect("unread") == {"type": "unread", "count": 0}


async def test_unknown_extensions_are_ignored(connect, amake_user):
    alice = await amake_user("alice")
    sock = await connect(alice, path="/ws/notifications/?ext=nope&ext=inbox")
    assert sock.hello["user"] == "alice"
    await db(services.mark_seen)(alice, through=0)
    assert await sock.nothing()  # the watermark did not move: no frame
