"""Settings of the stock Channels baseline: the project's, with a stock channels-redis layer
(library defaults: capacity 100, expiry 60 s, group expiry 1 day, default connection pool)."""

import os

from project.settings import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
    }
}
