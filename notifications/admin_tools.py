"""Admin pieces a site adds to its own ModelAdmins: "Notify selected users" and an "online"
column. One line each::

    from notifications.admin_tools import NotifyUsersMixin

    @admin.register(User)
    class UserAdmin(NotifyUsersMixin, auth_admin.UserAdmin):
        list_display = [*auth_admin.UserAdmin.list_display, "online"]

For a model that points at users (orders and their customers), name the field:
``notify_users_field = "customer"``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from . import broadcasting, presence, services
from .models import TITLE_MAX_LENGTH, Broadcast, Level

# The user ids online, read once per changelist page (not once per row).
_online: ContextVar[set[int] | None] = ContextVar("notifications_online", default=None)


class NotifyForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX_LENGTH)
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    url = forms.CharField(label="link", max_length=500, required=False)
    level = forms.ChoiceField(choices=Level.choices, initial=Level.INFO)

    def clean_url(self) -> str:
        try:
            return services._validate_url(self.cleaned_data.get("url", ""))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.action(description="Notify selected users", permissions=["notify"])
def notify_selected_users(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> HttpResponse | None:
    """Ask for a message, then send it to the selected users (or the users the selected
    objects point at through ``notify_users_field``) as a broadcast to those users, handed to
    the background sender; logged in the admin log."""
    field = getattr(modeladmin, "notify_users_field", None)
    users = get_user_model()._default_manager.filter(
        pk__in=queryset.values(field) if field else queryset.values("pk"), is_active=True
    )
    form = NotifyForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        # A broadcast to the named users, sent in the background: selecting "all 100,000"
        # must not hold the request (PRODUCT.md), and its follow-up page counts the reads.
        try:
            broadcast = broadcasting.notify_users(users, by=request.user, **form.cleaned_data)
        except (ValueError, PermissionDenied) as exc:
            modeladmin.message_user(request, f"Nobody was notified: {exc}", messages.ERROR)
            return None
        count = broadcasting.named_users(broadcast)
        state = {
            Broadcast.Status.SENT: "sent",
            Broadcast.Status.SCHEDULED: "handed to the background sender",
        }.get(broadcast.status)
        LogEntry.objects.log_actions(
            request.user.pk,
            Broadcast.objects.filter(pk=broadcast.pk),
            ADDITION,
            change_message=f"Notify selected users ({modeladmin.model._meta.verbose_name_plural}"
            f"): {count} users; {state or 'failed'}.",
            single_object=True,
        )
        if state is None:
            modeladmin.message_user(
                request, f"Nobody was notified: {broadcast.failure_reason}", messages.ERROR
            )
            return None
        modeladmin.message_user(
            request,
            f"“{broadcast.title}” to {count} users: {state} (broadcast #{broadcast.pk}).",
            messages.SUCCESS,
        )
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Notify selected users",
        "opts": modeladmin.model._meta,
        "form": form,
        "queryset": queryset,
        "user_count": users.count(),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "action": "notify_selected_users",
    }
    return TemplateResponse(request, "admin/notifications/notify_users.html", context)


class NotifyUsersMixin:
    """Adds "Notify selected users" (needs ``notifications.send_broadcast``) and an
    ``online`` column (use it in ``list_display``) to a ModelAdmin."""

    notify_users_field: str | None = None

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        if self.has_notify_permission(request):
            actions["notify_selected_users"] = self.get_action(notify_selected_users)  # type: ignore[attr-defined]
        return actions

    def has_notify_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(services.SEND_BROADCAST_PERMISSION)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        token = _online.set(presence.online_user_ids())
        try:
            response = super().changelist_view(request, extra_context)  # type: ignore[misc]
            if hasattr(response, "render"):
                response.render()  # the rows read the set while it is set
            return response
        finally:
            _online.reset(token)

    @admin.display(description="online", boolean=True)
    def online(self, obj: Any) -> bool:
        field = self.notify_users_field
        user_id = getattr(obj, f"{field}_id") if field else obj.pk
        online = _online.get()
        if online is None:  # outside the changelist (a detail page): read it now
            online = presence.online_user_ids()
        return user_id in online
