"""Notifications in the recipient's language.

``notify()`` takes lazy translation strings (``gettext_lazy``, ``format_lazy`` for
parameters) as ``title`` and ``body``. They are rendered once per configured language when the
event is stored: ``title``/``body`` hold the default language (``LANGUAGE_CODE``), and
``Event.translations`` the languages whose text differs (most strings have no translation in
most languages, so the map stays small). The live frame is then encoded once per language in
that map, in ``notify()``, and each hub writes every socket the frame of its language: one
encode per language, never one per recipient.

A socket's language is the user's preference (``Preferences.language``, passed by the page as
``?lang=``) or else its ``Accept-Language`` header, matched against ``languages()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.utils import translation
from django.utils.functional import Promise
from django.utils.translation import trans_real

from .conf import notifications_settings

MAX_HEADER = 500  # longer Accept-Language headers are not parsed (a cheap bound on work)


def languages() -> list[str]:
    """The language codes notifications are rendered in: ``NOTIFICATIONS["LANGUAGES"]``, or
    the codes of ``settings.LANGUAGES``."""
    configured = notifications_settings.LANGUAGES
    codes = configured if configured is not None else [code for code, _ in settings.LANGUAGES]
    return [code.lower() for code in codes]


def default_language() -> str:
    return settings.LANGUAGE_CODE.lower()


def render(title: Any, body: Any) -> tuple[Any, Any, dict[str, dict[str, str]]]:
    """``title`` and ``body`` as text in the default language, and the languages whose text
    differs, ``{code: {"title", "body"}}``. Plain strings come back as they are, with ``{}``."""
    if not isinstance(title, Promise) and not isinstance(body, Promise):
        return title, body, {}
    with translation.override(default_language()):
        default = (str(title), str(body))
    translations = {}
    for code in languages():
        with translation.override(code):
            text = (str(title), str(body))
        if text != default:
            translations[code] = {"title": text[0], "body": text[1]}
    return default[0], default[1], translations


def pick(translations: dict[str, dict[str, str]], language: str | None) -> dict[str, str] | None:
    """The translation for ``language`` (``de-at`` falls back to ``de``), or None."""
    if not language or not translations:
        return None
    found = translations.get(language)
    if found is None and "-" in language:
        found = translations.get(language.split("-")[0])
    return found


def _supported(code: str) -> str | None:
    code = code.lower()
    available = languages()
    if code in available:
        return code
    base = code.split("-")[0]
    return base if base in available else None


def socket_language(requested: Iterable[str], accept_language: str | None) -> str | None:
    """The language of a socket: the first valid ``?lang=`` value, else the best match of its
    ``Accept-Language`` header, else None (the default language)."""
    for code in list(requested)[:1]:
        if 0 < len(code) <= 15 and (found := _supported(code)):
            return found
    if accept_language and len(accept_language) <= MAX_HEADER:
        for code, _ in trans_real.parse_accept_lang_header(accept_language):
            if code != "*" and (found := _supported(code)):
                return found
    return None
