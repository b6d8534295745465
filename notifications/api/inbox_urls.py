"""URLs of the signed-in user's JSON inbox API (included by notifications/urls.py)."""

from django.urls import path

from . import inbox

urlpatterns = [
    path("api/v1/inbox", inbox.inbox, name="api_inbox"),
    path("api/v1/inbox/count", inbox.count, name="api_inbox_count"),
    path("api/v1/inbox/read", inbox.read, name="api_inbox_read"),
    path("api/v1/inbox/unread", inbox.unread, name="api_inbox_unread"),
    path("api/v1/inbox/seen", inbox.seen, name="api_inbox_seen"),
    path("api/v1/inbox/archive", inbox.archive, name="api_inbox_archive"),
    path("api/v1/inbox/unarchive", inbox.unarchive, name="api_inbox_unarchive"),
    path("api/v1/inbox/topics", inbox.topics, name="api_inbox_topics"),
    path("api/v1/inbox/preferences", inbox.preferences, name="api_inbox_preferences"),
]
