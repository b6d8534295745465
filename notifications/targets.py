"""What a notification is about: ``notify(..., target=obj)`` and cleaning up after ``obj``.

An event stores a generic reference to its target (content type and primary key, as
django-notifications-hq does), not a foreign key: the target can be any model, and deleting it
does not touch the event. The notification stays in its recipients' inboxes (it happened:
"Order 42 shipped" is still true once the order is deleted), and ``event.target`` is then
None. A site that wants the reference cleared when the object goes (so that a new object that
reuses the primary key, as SQLite may, does not inherit old notifications) connects
:func:`forget_on_delete` for its models::

    from notifications.targets import forget_on_delete

    class ShopConfig(AppConfig):
        def ready(self):
            forget_on_delete(self.get_model("Order"))
"""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.db.models.signals import post_delete


def target_reference(obj: Any) -> tuple[ContentType, str]:
    """The (content type, primary key as a string) that stores a reference to ``obj``;
    ``ValueError`` unless it is a saved model instance."""
    if not isinstance(obj, Model):
        raise ValueError(f"target must be a model instance, not {type(obj).__name__}")
    if obj.pk is None:
        raise ValueError("target must be saved (it has no primary key)")
    pk = str(obj.pk)
    if len(pk) > 255:
        raise ValueError("target's primary key is longer than 255 characters")
    # get_for_model is cached per process: no query after the first for each model.
    return ContentType.objects.get_for_model(obj, for_concrete_model=False), pk


def forget_target(obj: Model) -> int:
    """Clear the target reference of every event about ``obj``; return how many. The events
    stay where they are, in inboxes and replays, with ``target`` None."""
    from .models import Event

    content_type, pk = target_reference(obj)
    return Event.objects.filter(target_content_type=content_type, target_object_id=pk).update(
        target_content_type=None, target_object_id=""
    )


def _forget_deleted(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    forget_target(instance)


def forget_on_delete(*models: type[Model]) -> None:
    """Clear the target reference of events about an instance of these models when it is
    deleted (in the deleting transaction: a rollback keeps the reference). Idempotent."""
    for model in models:
        post_delete.connect(
            _forget_deleted, sender=model, dispatch_uid=f"notifications.targets.{model._meta.label}"
        )
