"""The channel layer's Redis hosts from the environment (docs/deployment.md, "Redis").

- ``REDIS_URL``: one URL, or several separated by commas. Several hosts are shards: channels-redis
  spreads channels and groups over them by consistent hashing. ``rediss://`` is TLS; TLS
  options go in the URL's query as redis-py reads them, for example
  ``rediss://redis.internal:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem&ssl_cert_reqs=required``.
- ``REDIS_SENTINELS``: ``host:port`` of the Sentinels, comma separated, with
  ``REDIS_SENTINEL_MASTER`` (the monitored master's name, default ``mymaster``): the layer asks
  the Sentinels for the current master and follows a failover. ``REDIS_DB`` (default 0) and
  ``REDIS_PASSWORD`` apply to the master; ``REDIS_SENTINEL_PASSWORD`` to the Sentinels.
  ``REDIS_SENTINELS`` takes precedence over ``REDIS_URL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class RedisConfigError(ValueError):
    """The Redis environment variables cannot be used as they are."""


def redis_hosts(env: Mapping[str, str]) -> list[Any]:
    """The ``hosts`` of ``CHANNEL_LAYERS["default"]["CONFIG"]``; empty without Redis."""
    sentinels = [item.strip() for item in env.get("REDIS_SENTINELS", "").split(",") if item.strip()]
    if sentinels:
        host: dict[str, Any] = {
            "sentinels": [_host_port(item) for item in sentinels],
            "master_name": env.get("REDIS_SENTINEL_MASTER", "mymaster"),
            "db": int(env.get("REDIS_DB", "0")),
        }
        if env.get("REDIS_PASSWORD"):
            host["password"] = env["REDIS_PASSWORD"]
        if env.get("REDIS_SENTINEL_PASSWORD"):
            host["sentinel_kwargs"] = {"password": env["REDIS_SENTINEL_PASSWORD"]}
        return [host]
    urls = [item.strip() for item in env.get("REDIS_URL", "").split(",") if item.strip()]
    for url in urls:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise RedisConfigError(
                f"REDIS_URL: {url!r} is not a redis://, rediss:// or unix:// URL"
            )
    return urls


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RedisConfigError(f"REDIS_SENTINELS: {item!r} is not host:port")
    return host.strip("[]"), int(port)
