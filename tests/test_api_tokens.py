"""API tokens: ``manage.py notifications_token`` and the admin (create once, revoke, log)."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from notifications.api import tokens
from notifications.models import ApiToken

from .server import manage

pytestmark = pytest.mark.django_db

ADMIN = "/admin/notifications/apitoken/"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("notifications_token", *args, stdout=out)
    return out.getvalue()


def test_create_prints_the_token_once_as_its_last_line():
    output = run("create", "ci", "--scope", "users", "--scope", "groups", "--rate", "30")
    last = output.strip().splitlines()[-1]
    match = re.fullmatch(r"token=(ntk_[A-Za-z0-9_-]{43})", last)
    assert match, output
    token = ApiToken.objects.get(name="ci")
    assert token.digest == hashlib.sha256(match[1].encode()).hexdigest()
    assert (token.scopes, token.rate) == (["users", "groups"], 30)
    assert tokens.authenticate(match[1]) == token
    listing = run("list")
    assert "ci\t" + token.prefix + "\tusers,groups\t30\t" in listing
    assert match[1] not in listing


def test_create_without_scopes_may_use_every_key():
    run("create", "all")
    token = ApiToken.objects.get()
    assert token.scopes == [] and token.rate is None
    assert tokens.allowed_keys(token) == {
        "users",
        "groups",
        "topic",
        "everyone",
        "staff",
        "authenticated",
        "permission",
    }


def test_revoke_and_its_errors():
    raw = run("create", "ci").strip().splitlines()[-1].removeprefix("token=")
    assert "revoked at" in run("revoke", "ci")
    assert tokens.authenticate(raw) is None
    assert "already revoked" in run("revoke", "ci")
    with pytest.raises(CommandError, match="no token named 'ghost'"):
        run("revoke", "ghost")
    with pytest.raises(CommandError, match="exists already"):
        run("create", "ci")
    assert ApiToken.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_command_exit_status_in_its_own_process():
    created = manage("notifications_token", "create", "svc", "--scope", "everyone")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("token=ntk_")
    duplicate = manage("notifications_token", "create", "svc")
    assert duplicate.returncode == 1 and "exists already" in duplicate.stderr
    bad_scope = manage("notifications_token", "create", "x", "--scope", "root")
    assert bad_scope.returncode != 0 and "invalid choice" in bad_scope.stderr
    bad_rate = manage("notifications_token", "create", "x", "--rate", "0")
    assert bad_rate.returncode != 0
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["svc"]


# -- admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    return client


def test_admin_add_shows_the_token_once_and_stores_its_digest(admin_client):
    response = admin_client.post(
        ADMIN + "add/", {"name": "billing", "scopes": ["users", "topic"], "rate": "60"}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    match = re.search(r"<code>(ntk_[A-Za-z0-9_-]{43})</code>", " ".join(shown))
    assert match, shown
    token = ApiToken.objects.get()
    assert (token.name, token.scopes, token.rate) == ("billing", ["users", "topic"], 60)
    assert token.digest == hashlib.sha256(match[1].encode()).hexdigest()
    assert LogEntry.objects.get().object_repr == "billing"
    # The change page never shows it again.
    page = admin_client.get(f"{ADMIN}{token.pk}/change/").content.decode()
    assert match[1] not in page and token.prefix in page


def test_admin_revoke_action_is_logged(admin_client):
    token, raw = tokens.create_token("svc")
    response = admin_client.post(
        ADMIN, {"action": "revoke_selected", "_selected_action": [token.pk]}, follow=True
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert tokens.authenticate(raw) is None
    entry = LogEntry.objects.get(action_flag=CHANGE)
    assert (entry.object_id, entry.change_message) == (str(token.pk), "Revoked.")


def test_revoke_action_needs_the_change_permission(make_user):
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    client = Client()
    client.force_login(viewer)
    token, _ = tokens.create_token("svc")
    page = client.get(ADMIN)
    assert page.status_code == 200
    assert "revoke_selected" not in page.content.decode()
    client.post(ADMIN, {"action": "revoke_selected", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is None
