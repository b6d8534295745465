"""System checks and the NOTIFICATIONS settings object."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from notifications.checks import check_settings
from notifications.conf import notifications_settings

REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def ids(**overrides):
    with override_settings(**overrides):
        return [message.id for message in check_settings()]


def test_unknown_key_is_an_error():
    assert ids(NOTIFICATIONS={"REPLAY_LIMT": 5}) == ["notifications.E001"]
    with (
        override_settings(NOTIFICATIONS={"REPLAY_LIMT": 5}),
        pytest.raises(ImproperlyConfigured, match="Unknown NOTIFICATIONS key"),
    ):
        notifications_settings.REPLAY_LIMIT  # noqa: B018


def test_missing_layer_alias_is_an_error():
    assert "notifications.E002" in ids(NOTIFICATIONS={"CHANNEL_LAYER": "nope"})


def test_in_memory_layer_in_production_is_a_warning():
    assert "notifications.W001" in ids(DEBUG=False, CHANNEL_LAYERS=IN_MEMORY)
    assert "notifications.W001" not in ids(DEBUG=True, CHANNEL_LAYERS=IN_MEMORY)
    assert "notifications.W001" not in ids(DEBUG=False, CHANNEL_LAYERS=REDIS)


def test_settings_reload_on_override():
    assert notifications_settings.REPLAY_LIMIT == 200
    with override_settings(NOTIFICATIONS={"REPLAY_LIMIT": 7}):
        assert notifications_settings.REPLAY_LIMIT == 7
    assert notifications_settings.REPLAY_LIMIT == 200
