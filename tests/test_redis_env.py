"""Redis from the environment (project/redis_env.py): TLS, Sentinel and several hosts, each
against real redis-server processes (private ones on free ports, never the shared one)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from project.redis_env import RedisConfigError, redis_hosts

from .faultkit import RedisServer, free_port, wait_until
from .server import ServerProcess
from .support import require_service
from .test_server import _cli_reaches_client

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_hosts_from_the_environment():
    assert redis_hosts({}) == []
    assert redis_hosts({"REDIS_URL": "redis://a:6379/0"}) == ["redis://a:6379/0"]
    assert redis_hosts({"REDIS_URL": "redis://a:6379/0, rediss://b:6380/1"}) == [
        "redis://a:6379/0",
        "rediss://b:6380/1",
    ]
    assert redis_hosts(
        {
            "REDIS_URL": "redis://ignored:6379/0",
            "REDIS_SENTINELS": "s1:26379,[::1]:26380",
            "REDIS_SENTINEL_MASTER": "main",
            "REDIS_DB": "2",
            "REDIS_PASSWORD": "pw",
            "REDIS_SENTINEL_PASSWORD": "spw",
        }
    ) == [
        {
            "sentinels": [("s1", 26379), ("::1", 26380)],
            "master_name": "main",
            "db": 2,
            "password": "pw",
            "sentinel_kwargs": {"password": "spw"},
        }
    ]
    for bad in ({"REDIS_URL": "http://a"}, {"REDIS_SENTINELS": "nohostport"}):
        with pytest.raises(RedisConfigError):
            redis_hosts(bad)


def _require_redis() -> None:
    require_service(
        "redis",
        RedisServer.available(),
        "redis-server is not installed: apt-get install redis-server",
    )


class _Process:
    """A redis-server started with extra arguments, stopped on exit."""

    def __init__(self, *args: str, ping: list[str]) -> None:
        self.args, self.ping_command = args, ping
        self.process: subprocess.Popen | None = None

    def ping(self) -> bool:
        result = subprocess.run(
            ["redis-cli", *self.ping_command, "ping"], capture_output=True, text=True
        )
        return result.stdout.strip() == "PONG"

    def __enter__(self) -> _Process:
        self.process = subprocess.Popen(
            ["redis-server", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=10, what=f"redis-server {' '.join(self.args[:2])}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.mark.redis
@pytest.mark.server
@pytest.mark.asyncio
async def test_tls_redis_url():
    _require_redis()
    folder = Path(tempfile.mkdtemp(prefix="redis-tls-"))
    key, cert = _self_signed(folder)
    port = free_port()
    tls = [
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ]  # fmt: skip
    ping = ["--tls", "--cacert", str(cert), "-p", str(port)]
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
    try:
        with (
            _Process(*tls, ping=ping),
            ServerProcess(REDIS_URL=url, NOTIFICATIONS_POLL_INTERVAL="60") as server,
        ):
            # A 60 s poll: the event can only have come through Redis, over TLS.
            await _cli_reaches_client(server, REDIS_URL=url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.redis
@pytest.mark.server
@pytest.mark.asyncio
async def test_sentinel():
    _require_redis()
    folder = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
    with RedisServer() as master:
        port = free_port()
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor notify-master 127.0.0.1 {master.port} 1\n"
        )
        try:
            with _Process(str(config), "--sentinel", ping=["-p", str(port)]):
                env = {
                    "REDIS_SENTINELS": f"127.0.0.1:{port}",
                    "REDIS_SENTINEL_MASTER": "notify-master",
                }
                with ServerProcess(NOTIFICATIONS_POLL_INTERVAL="60", **env) as server:
                    await _cli_reaches_client(server, **env)
                    # The layer really is on the master the Sentinel named.
                    assert master.group_size("notifications.hubs") == 1
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.redis
@pytest.mark.server
@pytest.mark.asyncio
async def test_several_hosts():
    _require_redis()
    with RedisServer() as first, RedisServer() as second:
        url = f"{first.url},{second.url}"
        with ServerProcess(REDIS_URL=url, NOTIFICATIONS_POLL_INTERVAL="60") as server:
            await _cli_reaches_client(server, REDIS_URL=url)
            # channels-redis shards by consistent hashing: the hubs' group is on one of them.
            assert (
                first.group_size("notifications.hubs") + second.group_size("notifications.hubs")
                == 1
            )
