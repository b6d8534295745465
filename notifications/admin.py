"""Admin: compose and send broadcasts, manage topics, inspect events. Actions call services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import selectors
from .api import tokens as api_tokens
from .models import ApiScope, ApiToken, Event, Subscription, Topic


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


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiScope.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Audience keys this token may use; none ticked: all of them.",
    )

    class Meta:
        model = ApiToken
        fields = ["name", "scopes", "rate"]

    def clean_rate(self) -> int | None:
        rate = self.cleaned_data.get("rate")
        if rate is not None and rate < 1:
            raise forms.ValidationError("at least 1 request per minute")
        return rate


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """HTTP API tokens. The value is shown once, after "Save"; revoking is an action."""

    form = ApiTokenForm
    list_display = [
        "name",
        "prefix",
        "scope_list",
        "rate",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return ["name", "scopes", "rate"]
        return ["name", "prefix", "scopes", "rate", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="scopes")
    def scope_list(self, token: ApiToken) -> str:
        return ", ".join(token.scopes) or "all"

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        raw = None if change else api_tokens.issue(obj)
        super().save_model(request, obj, form, change)
        if raw is not None:
            # The only time the value exists outside the client: the database keeps a digest.
            self.message_user(
                request,
                format_html(
                    "The token “{}” is <code>{}</code>. Copy it now: it will not be shown again.",
                    obj.name,
                    raw,
                ),
                messages.WARNING,
            )

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.change_apitoken")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            token, changed = api_tokens.revoke_token(token.name)
            if changed:
                self.log_change(request, token, "Revoked.")
                revoked += 1
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)


# The broadcast console (compose, schedule, follow-up) has its own module.
from . import broadcast_admin, presence_admin  # noqa: E402, F401
