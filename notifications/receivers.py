"""Keep open sockets in step with changes made elsewhere (admin, shell, other code).

Group membership, topic subscriptions, staff and active flags decide what a socket receives;
when they change, the hubs reload the affected users. Logging out closes that session's
sockets at once (the hub's periodic session check is the backstop).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from . import selectors, services
from .models import Subscription, Topic

User = get_user_model()
_CHANGES = {"post_add", "post_remove", "post_clear"}


@receiver(m2m_changed, sender=User.groups.through)
def _user_groups_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if action == "pre_clear" and isinstance(instance, Group):
        # Members are gone after the clear; remember them now.
        instance._notifications_members = list(instance.user_set.values_list("pk", flat=True))
        return
    if action not in _CHANGES:
        return
    if isinstance(instance, Group):
        users = pk_set or getattr(instance, "_notifications_members", [])
    else:
        users = [instance.pk]
    services.membership_changed(users)


@receiver(m2m_changed, sender=Topic.groups.through)
def _topic_groups_changed(
    sender: Any, instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if action == "pre_clear" and isinstance(instance, Topic):
        instance._notifications_groups = list(instance.groups.values_list("pk", flat=True))
        return
    if action not in _CHANGES:
        return
    if isinstance(instance, Topic):
        groups = pk_set or getattr(instance, "_notifications_groups", [])
    else:
        groups = [instance.pk]
    services.membership_changed(selectors.users_in_groups(groups))


@receiver(m2m_changed, sender=Subscription)
def _topic_users_changed(
    sender: Any, instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if action in _CHANGES:
        services.membership_changed(pk_set or ([instance.pk] if isinstance(instance, User) else []))


@receiver(post_save, sender=Subscription)
@receiver(post_delete, sender=Subscription)
def _subscription_changed(sender: Any, instance: Subscription, **kwargs: Any) -> None:
    services.membership_changed([instance.user_id])


@receiver(m2m_changed, sender=Topic.members.through)
def _topic_members_changed(
    sender: Any, instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if action == "pre_clear" and isinstance(instance, Topic):
        instance._notifications_members = list(instance.members.values_list("pk", flat=True))
        return
    if action not in _CHANGES:
        return
    if isinstance(instance, Topic):
        users = pk_set or getattr(instance, "_notifications_members", [])
    else:
        users = [instance.pk]
    services.membership_changed(users)


@receiver(m2m_changed, sender=User.user_permissions.through)
def _user_permissions_changed(
    sender: Any, instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any
) -> None:
    # Permission audiences and notifications.view_private_topics follow permissions.
    if action == "pre_clear" and isinstance(instance, Permission):
        instance._notifications_holders = list(instance.user_set.values_list("pk", flat=True))
        return
    if action not in _CHANGES:
        return
    if isinstance(instance, Permission):
        users = pk_set or getattr(instance, "_notifications_holders", [])
    else:
        users = [instance.pk]
    services.membership_changed(users)


@receiver(m2m_changed, sender=Group.permissions.through)
def _group_permissions_changed(
    sender: Any, instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if action == "pre_clear" and isinstance(instance, Permission):
        instance._notifications_groups = list(instance.group_set.values_list("pk", flat=True))
        return
    if action not in _CHANGES:
        return
    if isinstance(instance, Group):
        groups = [instance.pk]
    else:
        groups = pk_set or getattr(instance, "_notifications_groups", [])
    services.membership_changed(selectors.users_in_groups(groups))


@receiver(post_save, sender=Topic)
def _topic_saved(sender: Any, instance: Topic, created: bool, **kwargs: Any) -> None:
    # A public topic made private: followers without a grant lose it, on open sockets too.
    if not created:
        services.topic_access_changed(instance)


@receiver(post_save, sender=User)
def _user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any, **kwargs: Any
) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login", "password"}):
        return
    services.membership_changed([instance.pk])


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if user is not None and session is not None and session.session_key:
        services.end_sessions([session.session_key])
