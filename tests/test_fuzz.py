"""Fuzzing the frame parser and the consumer with hypothesis (issue 4, docs/security.md).

The parser must turn any text into a :class:`ClientFrame` or a :class:`FrameError` with a
protocol code; the consumer must answer any sequence of text and binary frames with JSON
objects of known types, never crash (which a real server turns into a 1011 close) and keep
answering ``ping``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from notifications import notify
from notifications.conf import notifications_settings
from notifications.models import Topic
from notifications.realtime import frames
from notifications.realtime.frames import MAX_ID, ClientFrame, FrameError
from notifications.realtime.hub import reset_hub

from .support import Socket, session_cookie

# PROTOCOL.md, "Error codes" and the server-to-client frame types.
ERROR_CODES = frozenset(
    {
        "bad_json",
        "bad_frame",
        "bad_request",
        "unknown_type",
        "forbidden",
        "not_found",
        "rate_limited",
        "too_large",
    }
)
SERVER_TYPES = frozenset(
    {
        "hello",
        "notification",
        "replayed",
        "unread",
        "subscribed",
        "unsubscribed",
        "pong",
        "error",
    }
)
CLIENT_TYPES = ["ping", "resume", "subscribe", "unsubscribe", "read", "read_all"]

# Strategies ----------------------------------------------------------------------------------

# Strings inside JSON may hold anything JSON can escape, lone surrogates included
# (json.dumps writes them as \udXXX, which is valid JSON in an ASCII frame).
any_string = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=MAX_ID - 2, max_value=MAX_ID + 2)
    | st.floats()
    | any_string
)
jsonish = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_string, children, max_size=4)
    ),
    max_leaves=12,
)
field_values = (
    leaves
    | st.sampled_from(["news", "secret", "missing", "everyone", "Not a slug!", "news\n", ""])
    | st.lists(st.integers(min_value=-3, max_value=MAX_ID + 3), max_size=6)
    | jsonish
)
refs = st.none() | st.integers() | any_string | st.text(max_size=250) | jsonish
frameish = st.fixed_dictionaries(
    {"type": st.sampled_from(CLIENT_TYPES) | any_string | leaves},
    optional={
        "ref": refs,
        "cursor": field_values,
        "topic": field_values,
        "ids": field_values,
        "extra": jsonish,
    },
)
topics = st.sampled_from(["news", "secret", "missing"])
small_ids = st.integers(min_value=0, max_value=12)
good_refs = st.none() | st.integers(min_value=-(2**63), max_value=2**63) | st.text(max_size=20)
# Well-formed frames of every client type (extra fields allowed): these reach the handlers.
valid_frames = st.one_of(
    st.fixed_dictionaries({"type": st.just("ping")}),
    st.fixed_dictionaries({"type": st.just("resume"), "cursor": small_ids}),
    st.fixed_dictionaries(
        {"type": st.just("subscribe"), "topic": topics}, optional={"cursor": small_ids}
    ),
    st.fixed_dictionaries({"type": st.just("unsubscribe"), "topic": topics}),
    st.fixed_dictionaries({"type": st.just("read"), "ids": st.lists(small_ids, max_size=5)}),
    st.fixed_dictionaries({"type": st.just("read_all")}),
).flatmap(
    lambda frame: st.fixed_dictionaries(
        {key: st.just(value) for key, value in frame.items()},
        optional={"ref": good_refs, "extra": jsonish},
    )
)
json_texts = st.one_of(
    valid_frames.map(json.dumps),
    jsonish.map(json.dumps),
    frameish.map(json.dumps),
    frameish.map(lambda f: json.dumps(f, ensure_ascii=False)),
    # Deep nesting (the decoder's recursion limit), within the consumer's size limit.
    st.integers(min_value=1, max_value=1500).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=600).map(lambda n: '{"a":' * n + "1" + "}" * n),
)
# What a real transport can carry: valid UTF-8 text (no lone surrogates) or bytes.
transport_texts = st.one_of(st.text(max_size=120), json_texts)


# (a) The parser ----------------------------------------------------------------------------------


def _check_parse(text: str) -> ClientFrame | None:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = decode_error = ValueError
    else:
        decode_error = None
    try:
        frame = frames.parse(text)
    except FrameError as exc:
        assert exc.code in ERROR_CODES
        assert isinstance(exc.message, str) and exc.message
        if decode_error is not None:
            assert exc.code == "bad_json"
        elif not isinstance(body, dict):
            assert exc.code == "bad_frame"
        else:
            assert exc.code == "bad_request"
        assert exc.frame()["code"] == exc.code
        return None
    except Exception as exc:  # pragma: no cover - the property under test
        pytest.fail(f"parse raised {exc!r} for {text!r}")
    assert decode_error is None and isinstance(body, dict)
    assert isinstance(frame, ClientFrame)
    assert isinstance(frame.type, str) and frame.type == body["type"]
    ref = frame.ref
    assert ref is None or (isinstance(ref, str) and len(ref) <= 200) or type(ref) is int
    return frame


def _check_fields(frame: ClientFrame) -> None:
    """The field readers answer a value of the right shape or a ``bad_request``."""
    readers = {
        "cursor": lambda: frame.cursor(),
        "optional cursor": lambda: frame.cursor(required=False),
        "slug": frame.slug,
        "ids": frame.ids,
    }
    for name, read in readers.items():
        try:
            value = read()
        except FrameError as exc:
            assert (exc.code, exc.ref) == ("bad_request", frame.ref), name
            continue
        if name == "slug":
            assert isinstance(value, str) and frames.SLUG_RE.match(value)
        elif name == "ids":
            assert isinstance(value, list) and len(value) <= 1000
            assert all(type(item) is int for item in value)
        elif value is not None:
            assert type(value) is int and 0 <= value <= MAX_ID


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_any_text(text):
    _check_parse(text)


@settings(max_examples=400, deadline=None)
@given(json_texts)
def test_parse_any_json(text):
    frame = _check_parse(text)
    if frame is not None:
        _check_fields(frame)


@settings(max_examples=200, deadline=None)
@example('{"type": "ping", "ref": "\\ud800"}')
@given(json_texts)
def test_answers_to_any_frame_encode_as_utf8(text):
    """What the server sends back about a frame (its ``ref``, its error) is valid UTF-8."""
    try:
        frame = frames.parse(text)
    except FrameError as exc:
        answer = exc.frame()
    else:
        answer = frames.with_ref({"type": "pong"}, frame.ref)
    frames.encode(answer).encode("utf-8")


# (b) The consumer --------------------------------------------------------------------------------

END = "fuzz-end-3f1c"  # the ref of the closing ping; no strategy above produces it
SMALL_LIMIT = 4096  # MAX_FRAME_BYTES for the run, so that oversized frames stay cheap

messages = st.one_of(
    transport_texts.map(lambda text: ("text", text)),
    valid_frames.map(lambda f: ("text", json.dumps(f))),
    st.binary(max_size=120).map(lambda data: ("bytes", data)),
    frameish.map(lambda f: ("bytes", json.dumps(f).encode())),
)
oversized_frames = st.one_of(
    st.integers(min_value=SMALL_LIMIT - 20, max_value=2 * SMALL_LIMIT).map(
        lambda n: ("text", json.dumps({"type": "ping", "pad": "x" * n}))
    ),
    st.integers(min_value=SMALL_LIMIT + 1, max_value=2 * SMALL_LIMIT).map(
        lambda n: ("bytes", b"\x00" * n)
    ),
)
# One batch in four ends with a frame at or over the limit.
tails = st.one_of(st.just([]), st.just([]), st.just([]), oversized_frames.map(lambda m: [m]))


def _check_answer(frame: Any) -> None:
    assert isinstance(frame, dict), frame
    assert frame.get("type") in SERVER_TYPES, frame
    if frame["type"] == "error":
        assert frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["message"], str) and frame["message"], frame


async def _exercise(batch: list[tuple[str, Any]], cookie: str | None) -> None:
    sock = Socket(cookie=cookie)
    try:
        connected, _ = await sock.communicator.connect(timeout=5)
        assert connected
        await sock.expect("hello", timeout=5)
        limit = notifications_settings.MAX_FRAME_BYTES
        oversized = False
        for kind, payload in batch:
            # send_input, not send_to: empty frames are frames too.
            await sock.communicator.send_input({"type": "websocket.receive", kind: payload})
            oversized = len(payload.encode() if kind == "text" else payload) > limit
            if oversized:  # the socket closes after this one
                break
        if not oversized:
            await sock.send({"type": "ping", "ref": END})
        answers: list[dict[str, Any]] = []
        while True:
            message = await sock.communicator.receive_output(timeout=5)
            if message["type"] == "websocket.close":
                assert oversized, f"closed with {message.get('code')} after {answers}"
                assert message.get("code") == 1009
                event("closed 1009")
                assert answers[-1] == {
                    "type": "error",
                    "code": "too_large",
                    "message": f"frames are limited to {limit} bytes",
                }
                return
            assert message["type"] == "websocket.send" and message.get("bytes") is None
            frame = json.loads(message["text"])
            _check_answer(frame)
            event(f"answer: {frame['type']} {frame.get('code', '')}".strip())
            answers.append(frame)
            if frame == {"type": "pong", "ref": END}:
                assert not oversized
                return
    finally:
        try:
            await sock.communicator.disconnect(timeout=2)
        finally:
            await reset_hub()


@pytest.mark.django_db(transaction=True)
def test_consumer_survives_arbitrary_frames(make_user):
    alice = make_user("alice")
    Topic.objects.create(name="News", slug="news")
    Topic.objects.create(name="Secret", slug="secret", is_public=False)
    notify(alice, "one")
    notify("news", "two")
    notify("everyone", "three")
    cookie = session_cookie(alice)

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(messages, min_size=1, max_size=6), tail=tails, signed_in=st.booleans())
    def run(batch, tail, signed_in):
        # A fresh event loop (and so a fresh hub) per example.
        asyncio.run(_exercise(batch + tail, cookie if signed_in else None))

    with override_settings(
        NOTIFICATIONS={"RATE_LIMIT_FRAMES": 10**9, "MAX_FRAME_BYTES": SMALL_LIMIT}
    ):
        run()
