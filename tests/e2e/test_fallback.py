"""The Server-Sent Events fallback, in Chromium behind a proxy that refuses WebSocket upgrades
with 403 (as some corporate proxies do), on daphne and on uvicorn."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from playwright.sync_api import expect

from notifications import notify
from notifications.selectors import unread_count

from ..server import ServerProcess
from ..support import session_cookie
from .conftest import watch

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

DEADLINE_MS = 10_000
NO_SHARING = "delete window.SharedWorker; delete window.BroadcastChannel;"
FAST_RETRY = "window.notificationsOptions = {wsRetryAfter: 1500, backoffBase: 100};"


class UpgradeRefusingProxy:
    """A TCP proxy on 127.0.0.1 that answers 403 to ``Upgrade: websocket`` requests and passes
    everything else through to ``upstream_port``; counts the upgrades it refused."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UpgradeRefusingProxy:
        self._thread.start()
        assert self._ready.wait(5), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if re.search(rb"(?im)^upgrade:\s*websocket", head):
            self.refused += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        # One request per connection: every request head passes the check above.
        head = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", head)
        up_writer.write(head[:-2] + b"Connection: close\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            writer.close()
            up_writer.close()


@pytest.fixture(params=["daphne", "uvicorn"])
def proxied(request, transactional_db):
    with (
        ServerProcess(server=request.param, NOTIFICATIONS_LOG_LEVEL="DEBUG") as server,
        UpgradeRefusingProxy(server.port) as proxy,
    ):
        yield server, proxy


@pytest.mark.parametrize("sharing", ["per-tab", "shared-worker"])
def test_falls_back_to_server_sent_events_and_retries_websocket(
    proxied, browser, make_user, page_errors, sharing
):
    # per-tab: the tab's own client falls back; shared-worker: the worker's does, for all tabs.
    transport = "sse" if sharing == "per-tab" else "shared"
    server, proxy = proxied
    alice = make_user("alice")
    before = notify(alice, "Before the page")
    context = browser.new_context()
    try:
        context.add_init_script((NO_SHARING if sharing == "per-tab" else "") + FAST_RETRY)
        name, _, value = session_cookie(alice).partition("=")
        context.add_cookies([{"name": name, "value": value, "url": proxy.origin}])
        page = context.new_page()
        watch(page, page_errors)
        page.goto(proxy.origin + "/")
        state = page.locator("[data-notifications-state]")
        expect(state).to_have_attribute("data-state", "open", timeout=DEADLINE_MS)
        assert page.evaluate("window.notifications.transport") == transport
        assert proxy.refused >= 2
        badge = page.locator("[data-notifications-badge]")
        expect(badge).to_have_text("1")

        live = notify(alice, "Over the event stream", level="success")
        toast = page.locator(f'.nt-toast[data-notification-id="{live.id}"]')
        expect(toast).to_have_count(1, timeout=DEADLINE_MS)
        expect(badge).to_have_text("2")
        # Client actions go over the JSON API; the count comes back over the stream.
        page.evaluate(f"window.notifications.markRead([{before.id}])")
        expect(badge).to_have_text("1", timeout=DEADLINE_MS)
        assert unread_count(alice) == 1

        # It tries WebSocket again later, is refused once, and is back on the stream.
        refused = proxy.refused
        deadline = time.monotonic() + DEADLINE_MS / 1000
        while proxy.refused == refused:
            assert time.monotonic() < deadline, "the client never tried WebSocket again"
            page.wait_for_timeout(50)  # lets the page run while the proxy counts
        expect(state).to_have_attribute("data-state", "open", timeout=DEADLINE_MS)
        assert page.evaluate("window.notifications.transport") == transport
        # Resumed from its cursor: a notification sent meanwhile arrives once.
        after = notify(alice, "After the retry")
        expect(page.locator(f'.nt-toast[data-notification-id="{after.id}"]')).to_have_count(
            1, timeout=DEADLINE_MS
        )
        assert page.locator(f'.nt-toast[data-notification-id="{live.id}"]').count() <= 1
        # The server saw the streams come and go: the stream before the retry left the hub.
        log = server.output()
        assert len(re.findall(r"ws\.disconnect c\d+", log)) >= 1
    finally:
        context.close()
    assert page_errors == []
