"""The "Online now" page of the admin (linked from the admin index as a model of the app):
users online, anonymous connections and connections per server process, refreshed every
``PRESENCE_INTERVAL`` seconds from a JSON view while the page is open."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path

from . import presence
from .conf import notifications_settings
from .models import PresenceProcess

SHOWN_USERS = 500


def presence_page_data() -> dict[str, Any]:
    """What the page shows (also pushed to the page over the staff member's socket)."""
    return presence.overview(limit=SHOWN_USERS)


@admin.register(PresenceProcess)
class PresenceAdmin(admin.ModelAdmin):
    """Not a list of rows: the page of who is online now (any presence store)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("snapshot.json", view(self.snapshot_view), name="notifications_presence_json"),
            *super().get_urls(),
        ]

    def snapshot_view(self, request: HttpRequest) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(presence_page_data())

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Online now",
            "data": presence_page_data(),
            "interval_ms": int(notifications_settings.PRESENCE_INTERVAL * 1000),
            "interval_seconds": f"{notifications_settings.PRESENCE_INTERVAL:g}",
            "shown_limit": SHOWN_USERS,
        }
        return TemplateResponse(request, "admin/notifications/presence.html", context)
