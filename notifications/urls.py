from django.urls import include, path

from . import views
from .realtime import sse

app_name = "notifications"

urlpatterns = [
    path("notifications/", views.inbox, name="inbox"),
    path("notifications/<int:event_id>/read/", views.mark_read, name="mark_read"),
    path("notifications/read-all/", views.mark_all_read, name="mark_all_read"),
    path("notifications/preferences/", views.preferences, name="preferences"),
    path("sse/notifications/", sse.stream, name="stream"),
    path("healthz", views.healthz, name="healthz"),
    path("", include("notifications.api.inbox_urls")),
]
