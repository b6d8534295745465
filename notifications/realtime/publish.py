"""The raw sender. Call it only through ``services`` (which wraps it in ``on_commit``)."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from ..conf import notifications_settings
from .messages import HUB_GROUP

logger = logging.getLogger(__name__)


def publish_raw(message: dict[str, Any]) -> None:
    """Send ``message`` to every hub now, outside any transaction check.

    A failure is logged, never raised: the row is already committed and every hub's poll
    (``POLL_INTERVAL``) delivers events the layer lost.
    """
    layer = get_channel_layer(notifications_settings.CHANNEL_LAYER)
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(HUB_GROUP, message)
    except Exception:
        logger.exception("publish failed for %s; hubs will catch up by polling", message["type"])
