"""HTTP views: the inbox page, mark read over HTTP (the no-JavaScript path) and the health check.

They stay thin: reads come from ``selectors``, writes from ``services``.
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from . import health, selectors, services
from .realtime import drain

logger = logging.getLogger(__name__)


@require_safe
@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """The signed-in user's notifications, newest first, 20 a page."""
    # Take the stream cursor before the rows are read (they are read lazily, while the
    # template renders): an event committed in between is then both in the rows and in the
    # socket's replay - inbox.js drops the second copy - instead of in neither.
    cursor = selectors.stream_cursor()
    inbox = selectors.inbox_page(request.user, page=request.GET.get("page", 1))
    return render(
        request,
        "notifications/inbox.html",
        {
            "page_obj": inbox.page,
            "unread": inbox.unread,
            "notifications_cursor": cursor,
            "notifications_unread": inbox.unread,
        },
    )


def _redirect_back(request: HttpRequest) -> HttpResponse:
    """To the ``next`` field when it points into this site, else to the inbox."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return redirect("notifications:inbox")


@require_POST
@login_required
def mark_read(request: HttpRequest, event_id: int) -> HttpResponse:
    """Mark one notification read; other tabs of the user get the new unread count."""
    services.mark_read(request.user, [event_id])
    return _redirect_back(request)


@require_POST
@login_required
def mark_all_read(request: HttpRequest) -> HttpResponse:
    """Mark every notification read."""
    services.mark_all_read(request.user)
    messages.success(request, "All notifications are marked as read.")
    return _redirect_back(request)


async def _health() -> JsonResponse:
    database = await sync_to_async(health.check_database)()
    if database is not None:
        # A warning, not a traceback: a probe repeats this every few seconds during an outage.
        logger.warning("healthz: database unavailable: %s", database)
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    layer = await health.check_layer()
    if layer is not None:
        # The details (host, port) go to the log only: the endpoint may be public.
        logger.warning("healthz: channel layer unavailable: %s", layer)
        reason = "timeout" if layer.startswith("no round trip") else "error"
        return JsonResponse(
            {"status": "error", "channel_layer": "unavailable", "reason": reason}, status=503
        )
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
async def healthz(request: HttpRequest) -> JsonResponse:
    """``{"status": "ok"}`` when the database answers and, with a channel layer that spans
    processes (Redis), a message makes the round trip through it; else 503 saying which
    failed (for load balancers and container health checks)."""
    return await _health()


@never_cache
@require_safe
async def readyz(request: HttpRequest) -> JsonResponse:
    """As :func:`healthz`, and 503 ``{"status": "draining"}`` once this process received
    SIGTERM (realtime/drain.py): take it out of the load balancer."""
    drain.install()
    if drain.draining():
        return JsonResponse({"status": "draining"}, status=503)
    return await _health()
