"""Real-time notifications for Django.

The public API is deliberately tiny; see docs/api.md. Importing this package does not import
models, so it is safe in settings and AppConfig code.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["Audience", "anotify", "notify"]

if TYPE_CHECKING:
    from .audiences import Audience
    from .services import anotify, notify


def __getattr__(name: str) -> Any:
    # Lazy re-exports: `from notifications import notify` works without importing models
    # while the app registry is still loading.
    if name in ("notify", "anotify"):
        from . import services

        return getattr(services, name)
    if name == "Audience":
        from .audiences import Audience

        return Audience
    raise AttributeError(f"module 'notifications' has no attribute {name!r}")
