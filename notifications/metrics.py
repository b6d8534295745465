"""Prometheus metrics of this server process (PROTOCOL.md, "Metrics"), and ``GET /metrics``.

Every figure is per process: each process keeps its own counters in its own registry, and a
scrape of one process says nothing about the others (docs/deployment.md, "Metrics", says how to
scrape several). The hot path pays at most one counter increment per event, never one per
socket: the hub adds the number of sockets an event went to once, after its fan-out, and the
connection gauge is read from the hub only when a scrape asks.

Access: loopback clients by default; ``METRICS_ALLOWED_NETWORKS`` opens it to other networks,
``METRICS_TOKEN`` to any client that sends ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from functools import lru_cache

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from .conf import notifications_settings

# A registry of our own, not prometheus_client's global one: a site that already exports its
# own metrics keeps them apart, and nothing another library registers globally leaks out here.
REGISTRY = CollectorRegistry(auto_describe=True)
# RSS, CPU seconds and open files of the process (process_*), the interpreter (python_info)
# and the collector (python_gc_*): the dashboard's memory per connection needs the first.
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

CONNECTIONS = Gauge(
    "notifications_connections",
    "Open notification sockets of this process.",
    registry=REGISTRY,
)
HANDSHAKES = Counter(
    "notifications_handshakes",
    "WebSocket handshakes by result: accepted, origin (foreign Origin, 403), limit (a "
    "connection cap), bad_request (a query the server refuses), draining, error.",
    ["result"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "notifications_events_published",
    "Events this process handed to the channel layer (services publish on commit).",
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "notifications_publish_failures",
    "Publishes the channel layer refused or timed out (the hubs' poll delivers those events).",
    registry=REGISTRY,
)
EVENTS_RECEIVED = Counter(
    "notifications_events_received",
    "Events this process's hub fanned out, whoever published them.",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "notifications_deliveries",
    "Live notification frames written to this process's sockets.",
    registry=REGISTRY,
)
PUSHES = Counter(
    "notifications_pushes",
    "Transient push frames (push()/apush()) fanned out to this process's sockets.",
    registry=REGISTRY,
)
REPLAYED = Counter(
    "notifications_replayed",
    "Notification frames replayed to resuming clients.",
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "notifications_delivery_latency_seconds",
    "From an event's commit (its publish) to the end of its fan-out in this process.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

# Results of HANDSHAKES, created at 0 so that a dashboard's rate() sees every series at once.
HANDSHAKE_RESULTS = ("accepted", "origin", "limit", "bad_request", "draining", "error")
for _result in HANDSHAKE_RESULTS:
    HANDSHAKES.labels(_result)


def _open_connections() -> int:
    # Imported here: the hub pulls in models, and this module is imported by the publisher.
    from .realtime import hub

    current = hub._hub
    return len(current.connections) if current is not None else 0


CONNECTIONS.set_function(_open_connections)


# Recording (one call per event or per handshake, never per socket) -------------------------


def handshake(result: str) -> None:
    """Count one handshake with ``result`` (one of :data:`HANDSHAKE_RESULTS`)."""
    HANDSHAKES.labels(result).inc()


def fanned_out(sockets: int, committed_at: float | None) -> None:
    """One event fanned out to ``sockets`` local sockets; ``committed_at`` (``time.time()``
    at its publish, or None when unknown) gives the delivery latency."""
    EVENTS_RECEIVED.inc()
    if sockets:
        DELIVERIES.inc(sockets)
    if committed_at is not None:
        DELIVERY_LATENCY.observe(max(0.0, time.time() - committed_at))


# The endpoint ---------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _networks(
    entries: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_allowed(address: str | None, authorization: str | None = None) -> bool:
    """Whether a scrape from ``address`` (with this ``Authorization`` header) may read the
    metrics: the address is in ``METRICS_ALLOWED_NETWORKS``, or ``METRICS_TOKEN`` is set and
    the header is ``Bearer <that token>``."""
    token = notifications_settings.METRICS_TOKEN
    if token and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), str(token).encode()
        ):
            return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:  # a unix socket path, or garbage from a proxy header
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = _networks(tuple(notifications_settings.METRICS_ALLOWED_NETWORKS))
    return any(ip in network for network in networks)


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in the Prometheus text format, to allowed clients; 403 else."""
    if not client_allowed(request.META.get("REMOTE_ADDR"), request.headers.get("Authorization")):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
