from django.urls import path

from . import metrics, views
from .api import send

app_name = "notifications"

urlpatterns = [
    path("notifications/", views.inbox, name="inbox"),
    path("notifications/<int:event_id>/read/", views.mark_read, name="mark_read"),
    path("notifications/read-all/", views.mark_all_read, name="mark_all_read"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]

# The sending API for other services (notifications/api/send.py, docs/api.md).
urlpatterns += [
    path("api/v1/notifications", send.send_notification, name="api_send"),
    path("api/v1/notifications/batch", send.send_batch, name="api_send_batch"),
    path("api/v1/openapi.json", send.openapi, name="api_openapi"),
]
