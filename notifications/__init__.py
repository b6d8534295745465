"""Real-time notifications for Django.

The public API is deliberately tiny; see docs/api.md. Importing this package does not import
models, so it is safe in settings and AppConfig code.
"""

from typing import TYPE_CHECKING, Any

__all__ = [
    "Audience",
    "Notification",
    "anotify",
    "apush",
    "channel",
    "notify",
    "notify_many",
    "push",
]

if TYPE_CHECKING:
    from .audiences import Audience
    from .channels import channel
    from .services import Notification, anotify, apush, notify, notify_many, push


def __getattr__(name: str) -> Any:
    # Lazy re-exports: `from notifications import notify` works without importing models
    # while the app registry is still loading.
    if name in ("notify", "anotify", "push", "apush", "notify_many", "Notification"):
        from . import services

        return getattr(services, name)
    if name == "channel":
        from .channels import channel

        return channel
    if name == "Audience":
        from .audiences import Audience

        return Audience
    raise AttributeError(f"module 'notifications' has no attribute {name!r}")
