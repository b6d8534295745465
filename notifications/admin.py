"""Admin: compose and send broadcasts, manage topics, inspect events. Actions call services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from . import selectors, services
from .api import tokens as api_tokens
from .audiences import users_of
from .models import ApiScope, ApiToken, Broadcast, Event, Subscription, Topic


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


class BroadcastForm(forms.ModelForm):
    send_now = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Send when saved. Leave unticked to keep a draft and send it later with "
        "the “Send selected broadcasts” action.",
    )

    class Meta:
        model = Broadcast
        fields = ["title", "body", "url", "level", "audience", "groups", "users", "topic"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        audience = data.get("audience")
        needs = {
            Broadcast.Audience.GROUPS: ("groups", "choose at least one group"),
            Broadcast.Audience.USERS: ("users", "choose at least one user"),
            Broadcast.Audience.TOPIC: ("topic", "choose a topic"),
        }
        if audience in needs:
            field, message = needs[audience]
            if not data.get(field):
                self.add_error(field, message)
        return data


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    form = BroadcastForm
    list_display = ["title", "audience", "level", "sent_at", "sent_by", "recipients", "read"]
    list_filter = ["audience", "level", "sent_at"]
    search_fields = ["title", "body"]
    filter_horizontal = ["groups"]
    raw_id_fields = ["users"]
    autocomplete_fields = ["topic"]
    actions = ["send_selected"]

    def get_fieldsets(self, request: HttpRequest, obj: Broadcast | None = None) -> Any:
        compose = ("Message", {"fields": ["title", "body", "url", "level"]})
        audience = ("Audience", {"fields": ["audience", "groups", "users", "topic"]})
        if obj is not None and obj.sent_at:
            return [
                compose,
                audience,
                (
                    "Delivery",
                    {"fields": ["sent_at", "sent_by", "recipients", "read", "not_read_by"]},
                ),
            ]
        return [compose, audience, ("Send", {"fields": ["audience_size", "send_now"]})]

    def get_readonly_fields(self, request: HttpRequest, obj: Broadcast | None = None) -> list[str]:
        if obj is not None and obj.sent_at:
            return [
                "title",
                "body",
                "url",
                "level",
                "audience",
                "groups",
                "users",
                "topic",
                "sent_at",
                "sent_by",
                "recipients",
                "read",
                "not_read_by",
            ]
        return ["audience_size"]

    @admin.display(description="recipients now")
    def audience_size(self, obj: Broadcast | None) -> str:
        if obj is None or obj.pk is None:
            return "Save as a draft (untick “send now”) to see the count before sending."
        try:
            return str(users_of(services.broadcast_audience(obj)).count())
        except ValueError as exc:
            return str(exc)

    @admin.display(description="recipients")
    def recipients(self, obj: Broadcast) -> Any:
        return obj.event.recipient_count if obj.event else "—"

    @admin.display(description="read")
    def read(self, obj: Broadcast) -> str:
        return _stats_html(obj.event)

    @admin.display(description="not read by (first 100)")
    def not_read_by(self, obj: Broadcast) -> str:
        if obj.event is None:
            return "—"
        users = selectors.unread_by(obj.event)
        return format_html_join(", ", "{}", ((user.get_username(),) for user in users)) or "—"

    def save_model(self, request: HttpRequest, obj: Broadcast, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Many-to-many audiences (groups, users) are saved here, so send only afterwards.
        super().save_related(request, form, formsets, change)
        if form.cleaned_data.get("send_now") and form.instance.sent_at is None:
            self._send(request, form.instance)

    def has_send_permission(self, request: HttpRequest) -> bool:
        """Sending reaches real people: it needs ``notifications.send_broadcast``, not only
        the right to view or edit drafts."""
        return request.user.has_perm(services.SEND_BROADCAST_PERMISSION)

    def _send(self, request: HttpRequest, broadcast: Broadcast) -> bool:
        try:
            event = services.send_broadcast(broadcast, by=request.user)
        except (ValueError, PermissionDenied) as exc:
            self.message_user(request, f"“{broadcast}” was not sent: {exc}", messages.ERROR)
            return False
        self.log_change(request, broadcast, f"Sent to {event.recipient_count} recipients.")
        self.message_user(
            request, f"“{broadcast}” sent to {event.recipient_count} recipients.", messages.SUCCESS
        )
        return True

    @admin.action(description="Send selected broadcasts", permissions=["send"])
    def send_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for broadcast in queryset.filter(sent_at__isnull=True):
            self._send(request, broadcast)


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
