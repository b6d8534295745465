"""The sending HTTP API on the real server (daphne over TCP): delivery to an open socket, the
rate limit across two server processes, identical requests at once, and schemathesis against
the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from websockets.asyncio.client import connect as ws_connect

from notifications.api import tokens
from notifications.api.send import openapi_document
from notifications.models import Event, Topic

from .server import ServerProcess
from .support import away_from_a_minute_boundary

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server]


def call(server: ServerProcess, raw: str | None, body: object, path: str = "/api/v1/notifications"):
    """POST JSON with the token; return (status, decoded body, headers)."""
    request = urllib.request.Request(
        server.origin + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {raw}"} if raw else {}),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


@pytest.fixture
def server():
    with ServerProcess() as running:
        yield running


async def test_a_posted_notification_reaches_an_open_socket(server):
    _, raw = await sync_to_async(tokens.create_token)("svc", scopes=["everyone"])
    async with ws_connect(server.ws_url, origin=server.origin, open_timeout=5) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"
        status, answer, _ = await sync_to_async(call)(
            server, raw, {"audience": {"everyone": True}, "title": "Deploy done", "data": {"v": 7}}
        )
        assert status == 201, answer
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert frame["type"] == "notification"
    assert (frame["id"], frame["title"], frame["data"], frame["replay"]) == (
        answer["id"],
        "Deploy done",
        {"v": 7},
        False,
    )


def test_rate_limit_holds_across_two_server_processes(server):
    _, raw = tokens.create_token("slow", rate=3)
    body = {"audience": {"everyone": True}, "title": "t"}
    with ServerProcess() as other:
        away_from_a_minute_boundary()
        statuses = [call(s, raw, body)[0] for s in (server, other, server)]
        status, error, headers = call(other, raw, body)
    assert statuses == [201, 201, 201]
    assert (status, error["error"]["code"]) == (429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert Event.objects.count() == 3


def test_identical_requests_at_once_store_one_event(server):
    """Both answers carry the one event's id (run on PostgreSQL in CI's second pass)."""
    _, raw = tokens.create_token("svc")
    body = {"audience": {"everyone": True}, "title": "once", "idempotency_key": "deploy-17"}
    for round_ in range(3):
        body["idempotency_key"] = f"deploy-{round_}"
        barrier = threading.Barrier(4)
        answers: list = []

        def send(body=body, barrier=barrier, answers=answers) -> None:
            barrier.wait(5)
            answers.append(call(server, raw, body)[:2])

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        event = Event.objects.get(idempotency_key__endswith=f":deploy-{round_}")
        assert sorted(status for status, _ in answers) == [200, 200, 200, 201]
        assert {json.dumps(answer) for _, answer in answers} == {
            json.dumps({"id": event.id, "recipients": event.recipient_count})
        }
    assert Event.objects.count() == 3


def test_openapi_document_is_served_and_matches_the_file(server):
    with urllib.request.urlopen(server.origin + "/api/v1/openapi.json", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        served = json.loads(response.read())
    assert served == openapi_document()
    assert served["openapi"] == "3.1.0"
    assert set(served["paths"]) >= {"/api/v1/notifications", "/api/v1/notifications/batch"}


def schemathesis_command() -> list[str]:
    """The schemathesis CLI next to this interpreter (the test extra installs it)."""
    local = Path(sys.executable).with_name("schemathesis")
    found = str(local) if local.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.skip('schemathesis is not installed: pip install -e ".[test]"')
    return [found]


def test_schemathesis_finds_no_server_error_and_no_nonconformance(server, tmp_path):
    """Generated valid and invalid requests against the live server: no 5xx, every status,
    header, content type and body as documented, invalid data rejected, auth enforced."""
    _, raw = tokens.create_token("fuzz", rate=1_000_000)
    # The names the document's examples use, so that the examples phase sends valid requests.
    alice = get_user_model().objects.create_user("alice")
    alice.groups.add(Group.objects.create(name="editors"))
    Topic.objects.create(name="Billing", slug="billing")
    command = [
        *schemathesis_command(),
        "run",
        server.origin + "/api/v1/openapi.json",
        "--url",
        server.origin,
        "--header",
        f"Authorization: Bearer {raw}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
        "unsupported_method,ignored_auth",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100"),
        "--workers",
        "1",
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "1"),
        "--generation-database",
        "none",
        "--no-color",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(
        # In tmp_path: schemathesis keeps a crash cache (.schemathesis/) in its working folder.
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    for phase in ("Examples", "Coverage", "Fuzzing"):
        assert f"✅ {phase}" in result.stdout, result.stdout
    assert Event.objects.filter(title="Invoice 1042 paid").exists()  # the examples were sent
