"""Admin: compose and send broadcasts, manage topics, inspect events. Actions call services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import selectors
from .models import Event, Subscription, Topic


class SubscriptionInline(admin.TabularInline):
    """Users' own subscriptions. Not a grant: on a private topic one counts only while its
    user may read the topic (a member, in one of its groups, or view_private_topics)."""

    model = Subscription
    extra = 0
    raw_id_fields = ["user"]
    verbose_name = "subscriber (by their own choice)"
    verbose_name_plural = "subscribers (by their own choice; not a grant on private topics)"


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_public", "subscriber_count", "created_at"]
    list_filter = ["is_public"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["groups"]
    raw_id_fields = ["members"]
    inlines = [SubscriptionInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(_subscribers=Count("subscription"))

    @admin.display(description="subscribed users", ordering="_subscribers")
    def subscriber_count(self, topic: Topic) -> int:
        return topic._subscribers


def _stats_html(event: Event | None) -> str:
    if event is None:
        return "—"
    stats = selectors.read_stats(event)
    return format_html("{} of {} read ({}%)", stats.read, stats.recipients, stats.percent)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Events are written by notify() and broadcasts; the admin only shows them."""

    list_display = ["id", "title", "level", "reach", "topic", "recipient_count", "created_at"]
    list_filter = ["level", "reach", "topic"]
    search_fields = ["title", "body"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Event._meta.fields] + ["groups", "read_statistics"]
    exclude = ["groups"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="read")
    def read_statistics(self, event: Event) -> str:
        return _stats_html(event)


# The broadcast console (compose, schedule, follow-up) has its own module.
from . import broadcast_admin, presence_admin  # noqa: E402, F401
