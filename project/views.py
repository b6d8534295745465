"""Views of the demo site: the home page and a form that sends the visitor a notification."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from notifications import services
from notifications.models import Level


def home(request: HttpRequest) -> HttpResponse:
    """What this demo is, and (signed in) a form to send yourself a notification."""
    return render(request, "home.html", {"levels": Level.choices})


@require_POST
@login_required
def demo_send(request: HttpRequest) -> HttpResponse:
    """Send the signed-in user a notification.

    The form is posted in the background when the page is live (``data-notifications-async``,
    which asks for JSON) so the page stays and shows the toast; otherwise this redirects home
    with a message.
    """
    wants_json = "application/json" in request.headers.get("Accept", "")
    title = request.POST.get("title", "").strip() or "Hello from the demo"
    try:
        event = services.notify(
            request.user,
            title,
            level=request.POST.get("level", "info"),
            url=reverse("notifications:inbox"),
            actor=request.user,
        )
    except ValueError as exc:
        if wants_json:
            return JsonResponse({"error": str(exc)}, status=400)
        messages.error(request, str(exc))
    else:
        if wants_json:
            return JsonResponse({"id": event.id}, status=201)
        messages.success(request, f"Sent “{title}”. It is in your inbox.")
    return redirect("home")
