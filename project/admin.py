"""The demo's User admin: the notifications console's "Notify selected users" action and
"online" column, added in one line (NotifyUsersMixin) to Django's own UserAdmin."""

from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model

from notifications.admin_tools import NotifyUsersMixin

User = get_user_model()

admin.site.unregister(User)


@admin.register(User)
class UserAdmin(NotifyUsersMixin, auth_admin.UserAdmin):
    list_display = [*auth_admin.UserAdmin.list_display, "online"]
