"""Settings for the demo project, driven by environment variables (see docs/settings.md).

Defaults suit local development: SQLite and the in-memory channel layer, nothing else to
install. ``DATABASE_URL`` switches to PostgreSQL, ``REDIS_URL`` to channels-redis.
"""

import json
import os
import tempfile
from pathlib import Path

import dj_database_url

from project.redis_env import redis_hosts

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-development-key-change-me-in-production"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")

INSTALLED_APPS = [
    "daphne",  # its runserver serves HTTP and WebSocket on one port
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Persistent connections: the WebSocket handshake and the hub query the database
        # from one worker thread, which would otherwise reconnect for every query.
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets the server read while `manage.py notify` writes from another process;
            # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of
            # failing with "database is locked" on a lock upgrade.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # A file, not :memory:, so that real server processes started by the tests share it;
    # one per test run, so that two runs at once do not overwrite each other's.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get(
            "DJANGO_TEST_SQLITE",
            str(Path(tempfile.gettempdir()) / f"notifications-test-{os.getpid()}.sqlite3"),
        )
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
# One URL, several (shards), rediss:// (TLS) or Sentinels: project/redis_env.py.
REDIS_HOSTS = redis_hosts(os.environ)
# REDIS_LAYER: "pubsub" (channels_redis.pubsub.RedisPubSubChannelLayer: PUBLISH / SUBSCRIBE,
# the default: a targeted event costs the server a quarter of the CPU, docs/performance.md)
# or "core" (channels_redis.core.RedisChannelLayer: lists, a Lua script per message). Both
# are at-most-once for a process that is disconnected; the hub's database poll and gap reads
# cover what a layer drops.
REDIS_LAYER = os.environ.get("REDIS_LAYER", "pubsub")
# Key and channel prefix: sites (or test and benchmark runs) that share one Redis must differ,
# because pub/sub channels ignore the database number in the URL.
REDIS_PREFIX = os.environ.get("REDIS_PREFIX", "asgi")
if REDIS_HOSTS and REDIS_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # Group membership is each process's own subscription: it ends with the
            # process's connection, so nothing expires or needs renewing.
            "CONFIG": {"hosts": REDIS_HOSTS, "prefix": REDIS_PREFIX},
        }
    }
elif REDIS_HOSTS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": REDIS_HOSTS,
                "prefix": REDIS_PREFIX,
                # The hub's channel receives every event for this process.
                "capacity": 10_000,
                "expiry": 30,
                # Hubs renew their membership every minute; a process that died without
                # leaving drops out after five.
                "group_expiry": 300,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10_000},
        }
    }

# Sessions live in the database, which every server process sees.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = os.environ.get("DJANGO_SECURE_SSL_REDIRECT", "1") == "1"
    # Scrapes and probes reach each process over plain HTTP on its own address.
    SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$", r"^readyz$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

NOTIFICATIONS = {
    "ALLOWED_ORIGINS": _env_list("NOTIFICATIONS_ALLOWED_ORIGINS"),
}
# Any other key of the NOTIFICATIONS dict from NOTIFICATIONS_<KEY>, as JSON (1.5, false, null).
for _key in (
    "POLL_INTERVAL",
    "SESSION_CHECK_INTERVAL",
    "FAST_WRITES",
    "MAX_BUFFERED_BYTES",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_FRAME_BYTES",
    "RATE_LIMIT_FRAMES",
    "RATE_LIMIT_WINDOW",
    "ALLOW_MISSING_ORIGIN",
    "REQUEST_HEAD_TIMEOUT",
    "GC_FREEZE_INTERVAL",
    "GC_FULL_COLLECT_INTERVAL",
    "HEALTH_TIMEOUT",
    "DRAIN_TIMEOUT",
    "DRAIN_GRACE",
    "JSON_LOGS",
):
    if os.environ.get(f"NOTIFICATIONS_{_key}"):
        NOTIFICATIONS[_key] = json.loads(os.environ[f"NOTIFICATIONS_{_key}"])
# GET /metrics: client networks (comma separated CIDR; "none" for none) and a bearer token.
if "NOTIFICATIONS_METRICS_ALLOWED_NETWORKS" in os.environ:
    _networks = os.environ["NOTIFICATIONS_METRICS_ALLOWED_NETWORKS"]
    NOTIFICATIONS["METRICS_ALLOWED_NETWORKS"] = (
        [] if _networks.strip() == "none" else _env_list("NOTIFICATIONS_METRICS_ALLOWED_NETWORKS")
    )
if os.environ.get("NOTIFICATIONS_METRICS_TOKEN"):
    NOTIFICATIONS["METRICS_TOKEN"] = os.environ["NOTIFICATIONS_METRICS_TOKEN"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # The structured lines (NOTIFICATIONS_JSON_LOGS) are whole JSON objects already.
        "json_line": {"format": "%(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "json_console": {"class": "logging.StreamHandler", "formatter": "json_line"},
    },
    "loggers": {
        "notifications.events": {
            "handlers": ["json_console"],
            "level": "INFO",
            "propagate": False,
        },
        "notifications": {
            "handlers": ["console"],
            "level": os.environ.get("NOTIFICATIONS_LOG_LEVEL", "INFO"),
            # Own handler only: daphne configures the root logger too (lines would repeat).
            "propagate": False,
        },
    },
}
