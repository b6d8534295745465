"""The broadcast console in the Django admin: compose, preview, dry-run count, send now,
schedule, cancel, duplicate, test to oneself, and the follow-up page with its CSV export.

Sending needs ``notifications.send_broadcast`` on every path (buttons, actions, the test send,
and the background sender at send time); drafts need only add/change. Every state change is
written to the admin log. Views stay thin: the writes are in ``broadcasting``/``services``.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.forms import Script
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from . import broadcasting, followup, presence, selectors, services
from .audiences import Audience, users_of
from .models import Broadcast, Level

Status = Broadcast.Status
SEND_BUTTONS = ("_send_now", "_schedule")


def audience_of(data: dict[str, Any]) -> Audience:
    """The audience a compose form describes, before anything is saved (the dry run).
    ``ValueError`` when it names nobody; the same rule as ``services.broadcast_audience``."""
    kind = data.get("audience")
    if kind in services.BROADCAST_REACH:
        return Audience(reach=services.BROADCAST_REACH[kind])
    if kind == Broadcast.Audience.GROUPS:
        audience = Audience(groups=data.get("groups") or ())
    elif kind == Broadcast.Audience.USERS:
        audience = Audience(users=data.get("users") or ())
    elif kind == Broadcast.Audience.TOPIC:
        if not data.get("topic"):
            raise ValueError("choose a topic")
        audience = Audience(topic=data["topic"])
    elif kind == Broadcast.Audience.PERMISSION:
        if not data.get("permission"):
            raise ValueError("choose a permission")
        permission = data["permission"]
        audience = Audience(permission=f"{permission.content_type.app_label}.{permission.codename}")
    else:
        raise ValueError(f"unknown audience {kind!r}")
    if audience.is_empty:
        raise ValueError(f"choose at least one of the {kind}")
    return audience


def count_online(audience: Audience, online: list[int]) -> int:
    """How many of the audience's users are among ``online`` user ids."""
    if not online:
        return 0
    users = users_of(audience)
    if len(online) <= 2000:
        return users.filter(pk__in=online).count()
    online_set = set(online)
    return sum(1 for pk in users.values_list("pk", flat=True).iterator() if pk in online_set)


class BroadcastForm(forms.ModelForm):
    """One form for every audience; the button pressed (``intent``) adds its own checks."""

    intent = "_save"

    class Meta:
        model = Broadcast
        fields = [
            "title",
            "body",
            "url",
            "level",
            "audience",
            "groups",
            "users",
            "topic",
            "permission",
            "send_at",
            "expires_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "permission" in self.fields:
            self.fields["permission"].queryset = Permission.objects.select_related(
                "content_type"
            ).order_by("content_type__app_label", "codename")

    def clean_url(self) -> str:
        url = self.cleaned_data.get("url", "")
        try:
            return services._validate_url(url)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        audience = data.get("audience")
        needs = {
            Broadcast.Audience.GROUPS: ("groups", "choose at least one group"),
            Broadcast.Audience.USERS: ("users", "choose at least one user"),
            Broadcast.Audience.TOPIC: ("topic", "choose a topic"),
            Broadcast.Audience.PERMISSION: ("permission", "choose a permission"),
        }
        if audience in needs:
            field, message = needs[audience]
            if not data.get(field):
                self.add_error(field, message)
        now = timezone.now()
        send_at, expires_at = data.get("send_at"), data.get("expires_at")
        if self.intent == "_schedule":
            if send_at is None:
                self.add_error("send_at", "choose when to send it")
            elif send_at <= now:
                self.add_error("send_at", "choose a time in the future, or press “Send now”")
        starts = send_at if self.intent == "_schedule" and send_at else now
        if expires_at is not None and expires_at <= starts:
            self.add_error("expires_at", "it would expire before it is sent")
        return data


def _log(request: HttpRequest, broadcast: Broadcast | None, message: str, flag: int = CHANGE):
    """An admin log entry; one without a saved broadcast (a test of an unsaved form) still
    names the broadcast model."""
    LogEntry.objects.create(
        user_id=request.user.pk,
        content_type=ContentType.objects.get_for_model(Broadcast),
        object_id=str(broadcast.pk) if broadcast and broadcast.pk else None,
        object_repr=str(broadcast)[:200] if broadcast else "(unsaved broadcast)",
        action_flag=flag,
        change_message=message,
    )


def _skipped(reasons: Counter) -> str:
    return "; ".join(f"{count} skipped: {reason}" for reason, count in sorted(reasons.items()))


def _intent(request: HttpRequest) -> str:
    """The button pressed: ``_send_now``, ``_schedule`` or ``_save``. ``send_now=on`` (the
    checkbox of earlier versions) still means "Send now"."""
    if request.method != "POST":
        return "_save"
    if request.POST.get("send_now") in ("on", "1", "true"):
        return "_send_now"
    return next((name for name in SEND_BUTTONS if name in request.POST), "_save")


def _status_reason(broadcast: Broadcast) -> str:
    return {
        Status.SENT: "already sent",
        Status.SENDING: "being sent",
        Status.SCHEDULED: "already scheduled",
        Status.DRAFT: "a draft, not scheduled",
        Status.FAILED: "failed, not scheduled",
    }[broadcast.status]


class BroadcastAdmin(admin.ModelAdmin):
    form = BroadcastForm
    list_display = [
        "title",
        "status_label",
        "audience",
        "level",
        "send_at",
        "sent_at",
        "sent_by",
        "recipients",
        "read",
        "follow_up_link",
    ]
    list_filter = ["status", "audience", "level", "sent_at"]
    search_fields = ["title", "body"]
    # Autocomplete widgets for the audience lists (100,000 users would not fit a select) where
    # the site's admin can search them (get_autocomplete_fields); raw ids for users otherwise.
    raw_id_fields = ["users"]
    actions = ["send_selected", "cancel_selected", "duplicate_selected"]
    change_form_template = "admin/notifications/broadcast/change_form.html"

    class Media:
        css = {"all": ["notifications/notifications.css", "notifications/console.css"]}
        # A module: it imports the client's own toast builder (notifications.js).
        js = [Script("notifications/console.js", type="module")]

    def get_autocomplete_fields(self, request: HttpRequest) -> list[str]:
        fields = []
        for name in ("groups", "users", "topic"):
            related = Broadcast._meta.get_field(name).related_model
            model_admin = self.admin_site._registry.get(related)
            if model_admin is not None and model_admin.get_search_fields(request):
                fields.append(name)
        return fields

    # Permissions ---------------------------------------------------------------------------

    def has_send_permission(self, request: HttpRequest) -> bool:
        """Sending reaches real people: it needs ``notifications.send_broadcast``, not only
        the right to view or edit drafts."""
        return request.user.has_perm(services.SEND_BROADCAST_PERMISSION)

    def has_change_permission(self, request: HttpRequest, obj: Broadcast | None = None) -> bool:
        # Scheduled, sending and sent broadcasts are read-only (no Save buttons); a scheduled
        # one is cancelled back to a draft to be edited.
        if obj is not None and obj.status not in broadcasting.EDITABLE:
            return False
        return super().has_change_permission(request, obj)

    def has_compose_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) or super().has_change_permission(request)

    # The form --------------------------------------------------------------------------------

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kw: Any):
        form = super().get_form(request, obj, change=change, **kw)
        intent = _intent(request)
        return type(form.__name__, (form,), {"intent": intent})

    def get_fieldsets(self, request: HttpRequest, obj: Broadcast | None = None) -> Any:
        message = ("Message", {"fields": ["title", "body", "url", "level"]})
        audience = (
            "Audience",
            {"fields": ["audience", "groups", "users", "topic", "permission"]},
        )
        timing = ("Timing", {"fields": ["send_at", "expires_at"]})
        if obj is None or obj.status in broadcasting.EDITABLE:
            preview = ("Preview and reach", {"fields": ["preview", "reach"]})
            fieldsets = [message, audience, timing, preview]
            if obj is not None and obj.status == Status.FAILED:
                fieldsets.insert(0, ("Last attempt", {"fields": ["status_label", "failure"]}))
            return fieldsets
        state = ("Status", {"fields": ["status_label", "created_by", "scheduled_by"]})
        if obj.status == Status.SENT:
            delivery = (
                "Delivery",
                {"fields": ["sent_at", "sent_by", "recipients", "read", "not_read_by"]},
            )
            return [state, message, audience, timing, delivery]
        return [state, message, audience, timing]

    def get_readonly_fields(self, request: HttpRequest, obj: Broadcast | None = None) -> list[str]:
        computed = ["preview", "reach", "status_label", "failure", "not_read_by"]
        computed += ["recipients", "read", "created_by", "scheduled_by", "sent_at", "sent_by"]
        return computed

    @admin.display(description="status")
    def status_label(self, obj: Broadcast) -> str:
        if obj.status == Status.SCHEDULED and obj.send_at:
            when = timezone.localtime(obj.send_at).strftime("%Y-%m-%d %H:%M:%S")
            return format_html("Scheduled for {}", when)
        if obj.status == Status.FAILED:
            return mark_safe('<strong class="nt-console-failed">Failed</strong>')
        return obj.get_status_display()

    @admin.display(description="why it failed")
    def failure(self, obj: Broadcast) -> str:
        return obj.failure_reason or "—"

    @admin.display(description="preview")
    def preview(self, obj: Broadcast | None) -> str:
        return mark_safe(
            '<div class="nt-console-preview" data-console-preview>'
            '<p class="help">As the site&#x27;s own toast shows it, updated as you type.</p></div>'
        )

    @admin.display(description="recipients")
    def reach(self, obj: Broadcast | None) -> str:
        return format_html(
            '<output class="nt-console-reach" data-console-reach data-url="{}">…</output>'
            '<button type="button" class="button" data-console-test data-url="{}">'
            "Send a test to me</button> "
            '<span class="nt-console-test-result" data-console-test-result></span>',
            reverse("admin:notifications_broadcast_dry_run"),
            reverse("admin:notifications_broadcast_send_test"),
        )

    @admin.display(description="recipients at send time")
    def recipients(self, obj: Broadcast) -> Any:
        return obj.event.recipient_count if obj.event else "—"

    @admin.display(description="read")
    def read(self, obj: Broadcast) -> str:
        if obj.event is None:
            return "—"
        stats = selectors.read_stats(obj.event)
        return format_html("{} of {} read ({}%)", stats.read, stats.recipients, stats.percent)

    @admin.display(description="not read by (first 100)")
    def not_read_by(self, obj: Broadcast) -> str:
        if obj.event is None:
            return "—"
        users = followup.not_read_by(obj)[:100]
        names = ", ".join(user.get_username() for user in users) or "—"
        return format_html(
            '{} <a href="{}">all, with a filter and CSV export</a>',
            names,
            reverse("admin:notifications_broadcast_follow_up", args=[obj.pk]),
        )

    @admin.display(description="follow-up")
    def follow_up_link(self, obj: Broadcast) -> str:
        if obj.status != Status.SENT:
            return "—"
        url = reverse("admin:notifications_broadcast_follow_up", args=[obj.pk])
        return format_html('<a href="{}">follow-up</a>', url)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("event", "sent_by")

    # Saving and the buttons --------------------------------------------------------------------

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "may_send": self.has_send_permission(request),
            "may_add": self.has_add_permission(request),
            "may_change": super().has_change_permission(request),
        }
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Broadcast, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        if obj.status == Status.FAILED:  # edited after a failure: a draft again
            obj.status, obj.failure_reason = Status.DRAFT, ""
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Many-to-many audiences (groups, users) are saved here, so send only afterwards.
        super().save_related(request, form, formsets, change)
        broadcast = form.instance
        try:
            if form.intent == "_send_now":
                self._send_now(request, broadcast)
            elif form.intent == "_schedule":
                broadcasting.schedule(broadcast, by=request.user, at=broadcast.send_at)
                when = timezone.localtime(broadcast.send_at).strftime("%Y-%m-%d %H:%M:%S")
                _log(request, broadcast, f"Scheduled for {when}.")
                self.message_user(request, f"“{broadcast}” scheduled for {when}.")
        except (ValueError, PermissionDenied) as exc:
            # Refused (no send permission, nobody in the audience): the draft is kept and the
            # reason said, never silently dropped.
            self.message_user(
                request, f"“{broadcast}” was saved as a draft, not sent: {exc}", messages.ERROR
            )

    def _send_now(self, request: HttpRequest, broadcast: Broadcast) -> bool | None:
        """Send or hand over one broadcast and say so; True sent, None handed to the
        background sender, False failed. Raises what ``broadcasting.send_now`` raises."""
        outcome = broadcasting.send_now(broadcast, by=request.user)
        if outcome is None:
            count = broadcasting.named_users(broadcast)
            _log(request, broadcast, f"Sent now: {count} named users, handed to the sender.")
            self.message_user(
                request,
                f"“{broadcast}” is being sent to {count} users in the background; its status "
                "turns to Sent within seconds.",
                messages.SUCCESS,
            )
            return None
        if outcome.sent:
            self.message_user(request, f"“{broadcast}” {outcome.detail}.", messages.SUCCESS)
            return True
        self.message_user(request, f"“{broadcast}” was not sent: {outcome.detail}", messages.ERROR)
        return False

    def response_add(self, request: HttpRequest, obj: Broadcast, post_url_continue: Any = None):
        if _intent(request) != "_save":
            return HttpResponseRedirect(reverse("admin:notifications_broadcast_changelist"))
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Broadcast) -> HttpResponse:
        if _intent(request) != "_save":
            return HttpResponseRedirect(reverse("admin:notifications_broadcast_changelist"))
        return super().response_change(request, obj)

    # Actions -------------------------------------------------------------------------------------

    @admin.action(description="Send selected broadcasts now", permissions=["send"])
    def send_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = Counter()
        skipped: Counter = Counter()
        for broadcast in queryset:
            if broadcast.status not in broadcasting.EDITABLE:
                skipped[_status_reason(broadcast)] += 1
                continue
            try:
                outcome = broadcasting.send_now(broadcast, by=request.user)
            except (ValueError, PermissionDenied) as exc:
                skipped[str(exc)] += 1
                continue
            if outcome is None:
                count = broadcasting.named_users(broadcast)
                _log(request, broadcast, f"Sent now: {count} named users, handed to the sender.")
                done["handed to the background sender"] += 1
            elif outcome.sent:
                done["sent"] += 1
            else:
                skipped[outcome.detail] += 1
        parts = [f"{count} {what}" for what, count in sorted(done.items())] or ["0 sent"]
        self._report(request, ", ".join(parts), sum(done.values()), skipped)

    @admin.action(description="Cancel selected scheduled broadcasts", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        done, skipped = 0, Counter()
        for broadcast in queryset:
            if broadcasting.cancel(broadcast):
                _log(request, broadcast, "Cancelled the scheduled send; a draft again.")
                done += 1
            else:
                skipped[_status_reason(broadcast)] += 1
        self._report(request, f"{done} cancelled (drafts again)", done, skipped)

    @admin.action(description="Duplicate selected broadcasts as drafts", permissions=["add"])
    def duplicate_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        copies = 0
        for broadcast in queryset:
            copy = broadcasting.duplicate(broadcast, by=request.user)
            _log(request, copy, f"Added as a copy of broadcast #{broadcast.pk}.", ADDITION)
            copies += 1
        self._report(request, f"{copies} duplicated as drafts", copies, Counter())

    def _report(self, request: HttpRequest, done: str, count: int, skipped: Counter) -> None:
        text = done + (f"; {_skipped(skipped)}" if skipped else "") + "."
        level = messages.SUCCESS if count and not skipped else messages.WARNING
        self.message_user(request, text[0].upper() + text[1:], level)

    # Extra views ----------------------------------------------------------------------------

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("dry-run/", view(self.dry_run_view), name="notifications_broadcast_dry_run"),
            path("send-test/", view(self.send_test_view), name="notifications_broadcast_send_test"),
            path(
                "<path:object_id>/cancel/",
                view(self.cancel_view),
                name="notifications_broadcast_cancel",
            ),
            path(
                "<path:object_id>/duplicate/",
                view(self.duplicate_view),
                name="notifications_broadcast_duplicate",
            ),
            path(
                "<path:object_id>/follow-up/",
                view(self.follow_up_view),
                name="notifications_broadcast_follow_up",
            ),
            path(
                "<path:object_id>/not-read.csv",
                view(self.not_read_csv_view),
                name="notifications_broadcast_not_read_csv",
            ),
            *super().get_urls(),
        ]

    def _compose_form(self, request: HttpRequest) -> BroadcastForm:
        form_class = self.get_form(request, None, change=False)
        return form_class(request.POST)

    def dry_run_view(self, request: HttpRequest) -> JsonResponse:
        """The recipient count of the audience being composed, and how many of them are
        online now; nothing is saved."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the compose form"}, status=405)
        if not self.has_compose_permission(request):
            raise PermissionDenied
        form = self._compose_form(request)
        form.is_valid()  # the audience fields' cleaned values; other errors do not matter here
        data = {name: form.cleaned_data.get(name) for name in form.cleaned_data}
        try:
            audience = audience_of(data)
        except ValueError as exc:  # an audience still being chosen: say what is missing
            return JsonResponse({"error": str(exc)})
        try:
            now = presence.snapshot()
        except Exception:  # the count still helps while presence is unavailable
            now = {"users": [], "anonymous": None}
        everyone = audience.reach == "everyone"
        return JsonResponse(
            {
                "recipients": users_of(audience).count(),
                "online": count_online(audience, list(now["users"])),
                # Anonymous visitors are no recipients (no inbox); an announcement to
                # everyone is delivered to their open connections too.
                "anonymous_connections": now["anonymous"] if everyone else None,
            }
        )

    def send_test_view(self, request: HttpRequest) -> JsonResponse:
        """Send what is being composed to the requesting user only (not the broadcast's send)."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the compose form"}, status=405)
        if not self.has_compose_permission(request):
            raise PermissionDenied
        try:
            services.check_may_send(request.user)
        except PermissionDenied as exc:
            return JsonResponse({"error": str(exc)}, status=403)
        level = request.POST.get("level", "info")
        try:
            event = broadcasting.send_test(
                request.user,
                title=request.POST.get("title", ""),
                body=request.POST.get("body", ""),
                url=request.POST.get("url", ""),
                level=level if level in Level.values else "info",
            )
        except ValueError as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        _log(request, None, f"Sent a test to themself: “{event.title}” (event {event.id}).")
        return JsonResponse({"sent": True, "id": event.id})

    def _get_or_404(self, request: HttpRequest, object_id: str) -> Broadcast:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("no such broadcast")
        return obj

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponse(status=405)
        if not super().has_change_permission(request):
            raise PermissionDenied
        if broadcasting.cancel(obj):
            _log(request, obj, "Cancelled the scheduled send; a draft again.")
            self.message_user(request, f"“{obj}” cancelled: it is a draft again.")
        else:
            self.message_user(
                request, f"“{obj}” was not cancelled: {_status_reason(obj)}.", messages.WARNING
            )
        return HttpResponseRedirect(reverse("admin:notifications_broadcast_change", args=[obj.pk]))

    def duplicate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponse(status=405)
        if not self.has_add_permission(request):
            raise PermissionDenied
        copy = broadcasting.duplicate(obj, by=request.user)
        _log(request, copy, f"Added as a copy of broadcast #{obj.pk}.", ADDITION)
        self.message_user(request, f"A draft copy of “{obj}” was made; edit it and send it.")
        return HttpResponseRedirect(reverse("admin:notifications_broadcast_change", args=[copy.pk]))

    def follow_up_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Follow-up: {obj}",
            "broadcast": obj,
            "search": request.GET.get("q", "")[:100],
        }
        if obj.event is not None:
            context["figures"] = followup.follow_up(obj, now=timezone.now())
            users = followup.not_read_by(obj, search=context["search"])
            context["page"] = Paginator(users, 100).get_page(request.GET.get("page"))
        return TemplateResponse(request, "admin/notifications/broadcast/follow_up.html", context)

    def not_read_csv_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        if obj.event is None:
            raise Http404("not sent")
        users = followup.not_read_by(obj, search=request.GET.get("q", "")[:100])
        _log(request, obj, "Exported who has not read it (CSV).")

        def rows() -> Iterator[str]:
            buffer = _Echo()
            writer = csv.writer(buffer)
            yield writer.writerow(["id", "username", "email", "last_login"])
            for user in users.iterator(chunk_size=2000):
                email = getattr(user, user.get_email_field_name(), "") or ""
                yield writer.writerow(
                    [user.pk, _cell(user.get_username()), _cell(email), user.last_login or ""]
                )

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="broadcast-{obj.pk}-not-read.csv"'
        return response


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: str) -> str:
    # A cell starting like a formula runs as one in a spreadsheet (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


admin.site.register(Broadcast, BroadcastAdmin)
