"""GET /metrics (PROTOCOL.md, "Metrics"): the numbers of a real server process, and who may read
them."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from channels.db import database_sync_to_async as db
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from notifications import metrics

from .faultkit import async_wait_until
from .server import ServerProcess
from .support import session_cookie

CSRF = "a" * 32


def scrape(server: ServerProcess, headers: dict[str, str] | None = None) -> dict[str, float]:
    """``{"name{label=value}": value}`` of one scrape (labels sorted, no spaces)."""
    request = urllib.request.Request(f"{server.origin}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def status_of(server: ServerProcess, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{server.origin}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def demo_send(server: ServerProcess, cookie: str, title: str) -> int:
    """Have the server process itself store and publish a notification (the demo form)."""
    request = urllib.request.Request(
        f"{server.origin}/demo/send/",
        data=f"title={title}".encode(),
        headers={
            "Cookie": f"{cookie}; csrftoken={CSRF}",
            "X-CSRFToken": CSRF,
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        return json.loads(response.read())["id"]


async def recv(ws, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["daphne", "uvicorn-websockets-sansio"])
async def test_metrics_of_a_real_server(amake_user, kind):
    alice = await amake_user("alice")
    cookie = await db(session_cookie)(alice)
    with ServerProcess(server=kind) as server:
        before = await asyncio.to_thread(scrape, server)
        assert before["notifications_connections"] == 0
        assert before["notifications_handshakes_total{result=accepted}"] == 0
        headers = {"Cookie": cookie}
        async with (
            ws_connect(server.ws_url, origin=server.origin, additional_headers=headers) as a1,
            ws_connect(server.ws_url, origin=server.origin, additional_headers=headers) as a2,
            ws_connect(server.ws_url, origin=server.origin) as anonymous,
        ):
            for ws in (a1, a2, anonymous):
                assert (await recv(ws))["type"] == "hello"
            with pytest.raises(InvalidStatus):
                await ws_connect(server.ws_url, origin="https://evil.example")
            sent = await asyncio.to_thread(demo_send, server, cookie, "counted")
            for ws in (a1, a2):
                frame = await recv(ws)
                assert (frame["type"], frame["id"], frame["replay"]) == (
                    "notification",
                    sent,
                    False,
                )
            live = await asyncio.to_thread(scrape, server)
            # A socket that resumes from 0 gets the one event replayed.
            async with ws_connect(
                f"{server.ws_url}?cursor=0", origin=server.origin, additional_headers=headers
            ) as a3:
                assert (await recv(a3))["type"] == "hello"
                assert (await recv(a3))["id"] == sent
                assert await recv(a3) == {"type": "replayed", "count": 1, "complete": True}
                during = await asyncio.to_thread(scrape, server)
        assert live["notifications_connections"] == 3
        assert during["notifications_connections"] == 4
        assert live["notifications_handshakes_total{result=accepted}"] == 3
        assert live["notifications_handshakes_total{result=origin}"] == 1
        assert live["notifications_events_published_total"] == 1
        assert live["notifications_events_received_total"] == 1
        # Alice's two sockets, not the anonymous one: one event, two frames.
        assert live["notifications_deliveries_total"] == 2
        assert live["notifications_replayed_total"] == 0
        assert during["notifications_replayed_total"] == 1
        assert live["notifications_delivery_latency_seconds_count"] == 1
        assert 0 <= live["notifications_delivery_latency_seconds_sum"] < 5
        assert live["process_resident_memory_bytes"] > 0
        # All sockets closed: the gauge comes back down (the server notices the closes).
        await async_wait_until(
            lambda: scrape(server)["notifications_connections"] == 0, timeout=5, what="gauge at 0"
        )


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_metrics_closed_to_loopback_opens_with_the_token():
    with ServerProcess(
        NOTIFICATIONS_METRICS_ALLOWED_NETWORKS="none", NOTIFICATIONS_METRICS_TOKEN="s3cret-token"
    ) as server:
        assert status_of(server) == 403
        assert status_of(server, {"Authorization": "Bearer wrong"}) == 403
        assert status_of(server, {"Authorization": "Bearer s3cret-token"}) == 200


@override_settings(NOTIFICATIONS={"METRICS_TOKEN": "tok"})
def test_client_allowed_rules():
    assert metrics.client_allowed("127.0.0.1")
    assert metrics.client_allowed("127.8.9.10")
    assert metrics.client_allowed("::1")
    assert metrics.client_allowed("::ffff:127.0.0.1")
    assert not metrics.client_allowed("203.0.113.5")
    assert not metrics.client_allowed("10.0.0.1")
    assert not metrics.client_allowed(None)
    assert not metrics.client_allowed("not-an-address")
    assert metrics.client_allowed("203.0.113.5", "Bearer tok")
    assert metrics.client_allowed("203.0.113.5", "bearer tok")
    assert not metrics.client_allowed("203.0.113.5", "Bearer tok2")
    assert not metrics.client_allowed("203.0.113.5", "Basic tok")


@override_settings(NOTIFICATIONS={"METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8"]})
def test_client_allowed_networks_setting():
    assert metrics.client_allowed("10.1.2.3")
    assert not metrics.client_allowed("127.0.0.1")  # the setting replaces the default
    assert not metrics.client_allowed("203.0.113.5", "Bearer anything")  # no token set


def test_metrics_view_refuses_a_remote_client(client):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 403
    response = client.get("/metrics")  # the test client's REMOTE_ADDR is 127.0.0.1
    assert response.status_code == 200
    assert b"# TYPE notifications_deliveries_total counter" in response.content
    assert client.post("/metrics").status_code == 405


def test_grafana_dashboard_uses_exported_names():
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    exported = {
        line.split()[2]
        for line in generate_latest(metrics.REGISTRY).decode().splitlines()
        if line.startswith("# TYPE ")
    }
    # Counters export name_total, histograms name_bucket/_sum/_count.
    names = (
        exported
        | {f"{n}_total" for n in exported}
        | {f"{n}_{suffix}" for n in exported for suffix in ("bucket", "sum", "count")}
    )
    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "deploy/grafana-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:notifications|process)_[a-z_]+)\{", target["expr"])
    }
    assert used >= {
        "notifications_connections",
        "notifications_handshakes_total",
        "notifications_events_published_total",
        "notifications_events_received_total",
        "notifications_deliveries_total",
        "notifications_replayed_total",
        "notifications_delivery_latency_seconds_bucket",
    }
    assert used <= names, used - names


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_a_remote_client_behind_a_trusted_proxy_is_refused():
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 (its default --forwarded-allow-ips), as
    # it would from nginx: the scrape then comes from the visitor's address, not loopback.
    with ServerProcess(server="uvicorn-websockets-sansio") as server:
        assert status_of(server) == 200
        assert status_of(server, {"X-Forwarded-For": "203.0.113.5"}) == 403
        # What a trusted peer claims is believed: hence private process ports, or a token
        # (docs/deployment.md, "Opening it safely"); nginx overwrites the header.
        assert status_of(server, {"X-Forwarded-For": "127.0.0.1"}) == 200


NAMES = (
    "notifications_events_published_total",
    "notifications_events_received_total",
    "notifications_deliveries_total",
    "notifications_pushes_total",
    "notifications_delivery_latency_seconds_count",
)


def samples() -> dict[str, float]:
    return {name: metrics.REGISTRY.get_sample_value(name) or 0.0 for name in NAMES}


@pytest.mark.django_db(transaction=True)
async def test_batches_and_pushes_are_counted_per_event_once(connect):
    from notifications import Notification, apush, notify_many

    sockets = [await connect() for _ in range(3)]
    before = samples()
    events = await db(notify_many)([Notification("everyone", f"n{n}") for n in range(4)])
    for sock in sockets:
        got = [frame["id"] for frame in await sock.notifications(4)]
        assert got == [event.id for event in events]
    await apush("everyone", "progress", {"done": 1}, exclude=sockets[0].hello["socket"])
    for sock in sockets[1:]:
        assert (await sock.expect("push"))["event"] == "progress"
    assert await sockets[0].nothing()
    after = samples()
    delta = {name.removeprefix("notifications_"): after[name] - before[name] for name in NAMES}
    assert delta == {
        "events_published_total": 4,  # one layer message for the batch, four events
        "events_received_total": 4,
        "deliveries_total": 12,
        "pushes_total": 2,  # the sender's own socket left out
        "delivery_latency_seconds_count": 4,  # every event of the batch timed
    }
