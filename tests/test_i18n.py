"""Notifications in the recipient's language: lazy strings rendered per language at notify(),
one encode per language, each socket served in its own (preference or Accept-Language)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async as db
from django.test import Client
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy

from notifications import notify, services
from notifications.i18n import render, socket_language
from notifications.realtime import messages

from .support import Socket, session_cookie

# Django's own catalogs translate these: Yes -> Ja (de), Oui (fr).
TITLE = format_lazy("{}: {}", gettext_lazy("Yes"), "Ann")
BODY = gettext_lazy("Delete")


@pytest.fixture(autouse=True)
def _three_languages(settings):
    settings.LANGUAGE_CODE = "en-us"
    settings.NOTIFICATIONS = {
        **getattr(settings, "NOTIFICATIONS", {}),
        "LANGUAGES": ["en", "de", "fr"],
    }


def test_render_keeps_plain_text_and_translates_lazy_text():
    assert render("Hi", "there") == ("Hi", "there", {})
    title, body, translations = render(TITLE, BODY)
    assert (title, body) == ("Yes: Ann", "Delete")
    assert translations == {
        "de": {"title": "Ja: Ann", "body": "Löschen"},
        "fr": {"title": "Oui: Ann", "body": "Supprimer"},
    }


@pytest.mark.parametrize(
    ("lang", "header", "expected"),
    [
        (["de"], "fr", "de"),
        (["xx"], "fr-CH, de;q=0.5", "fr"),
        ([], "de-AT,de;q=0.9", "de"),
        ([], "*", None),
        ([], "ja", None),
        ([], "x" * 600, None),
        (["d" * 50], None, None),
    ],
)
def test_socket_language(lang, header, expected):
    assert socket_language(lang, header) == expected


@pytest.mark.django_db
def test_one_encode_per_translated_language(make_user):
    event = notify(make_user("alice"), TITLE, body=BODY)
    assert event.title == "Yes: Ann"
    message = messages.of_event(event, users=[event.pk], groups=[])
    assert json.loads(message["frame"])["title"] == "Yes: Ann"
    assert {code: json.loads(text)["title"] for code, text in message["translated"].items()} == {
        "de": "Ja: Ann",
        "fr": "Oui: Ann",
    }
    plain = notify(make_user("bob"), "plain")
    assert "translated" not in messages.of_event(plain, users=[], groups=[])


async def _open(user, *, accept_language=None, query=""):
    cookie = await db(session_cookie)(user) if user is not None else None
    sock = Socket(cookie=cookie, path=f"/ws/notifications/{query}")
    if accept_language:
        sock.communicator.scope["headers"].append((b"accept-language", accept_language.encode()))
    connected, _ = await sock.communicator.connect(timeout=5)
    assert connected
    sock.hello = await sock.expect("hello")
    return sock


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_one_event_in_two_languages_live_and_replayed(amake_user):
    anna = await amake_user("anna")
    sockets = {
        "de": await _open(anna, accept_language="de-DE,de;q=0.9"),
        "fr": await _open(anna, query="?lang=fr", accept_language="de"),
        "en": await _open(anna),
        "anonymous-de": await _open(None, accept_language="de"),
    }
    try:
        event = await db(notify)("everyone", TITLE, body=BODY)
        titles = {}
        for name, sock in sockets.items():
            frame = await sock.expect("notification")
            assert frame["id"] == event.id
            titles[name] = (frame["title"], frame["body"])
        assert titles == {
            "de": ("Ja: Ann", "Löschen"),
            "fr": ("Oui: Ann", "Supprimer"),
            "en": ("Yes: Ann", "Delete"),
            "anonymous-de": ("Ja: Ann", "Löschen"),
        }
        replayed = await _open(anna, query=f"?cursor={event.id - 1}", accept_language="fr")
        frame = await replayed.expect("notification")
        assert (frame["title"], frame["replay"]) == ("Oui: Ann", True)
        public = await _open(None, query=f"?cursor={event.id - 1}", accept_language="de")
        assert (await public.expect("notification"))["title"] == "Ja: Ann"
        for sock in (replayed, public):
            await sock.close()
    finally:
        for sock in sockets.values():
            await sock.close()


@pytest.mark.django_db
def test_feed_and_inbox_in_the_users_preferred_language(make_user):
    alice = make_user("alice")
    notify(alice, TITLE, body=BODY)
    client = Client()
    client.force_login(alice)
    assert client.get("/api/v1/inbox").json()["items"][0]["title"] == "Yes: Ann"
    assert client.get("/api/v1/inbox", HTTP_ACCEPT_LANGUAGE="fr").json()["items"][0]["title"] == (
        "Oui: Ann"
    )
    services.update_preferences(alice, language="de")
    assert client.get("/api/v1/inbox", HTTP_ACCEPT_LANGUAGE="fr").json()["items"][0]["title"] == (
        "Ja: Ann"
    )
    assert "Ja: Ann" in client.get("/notifications/").content.decode()
    with pytest.raises(ValueError, match="language"):
        services.update_preferences(alice, language="tlh")
