"""Run the project's real ASGI server (daphne) in a child process against the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    """The URL of the database the tests are using right now (the test database)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    if connection.vendor == "postgresql":
        user = settings.get("USER") or ""
        password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        host = settings.get("HOST") or "127.0.0.1"
        port = settings.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings['NAME']}"
    raise RuntimeError(f"no server URL for {connection.vendor}")


def child_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("PYTEST", "DJANGO_", "REDIS_URL", "REDIS_SENTINEL", "DATABASE_URL", "NOTIFICATIONS_")
        )
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": database_url(),
            "DJANGO_DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
            # Tests read ws.connect lines (DEBUG) from the server's output.
            "NOTIFICATIONS_LOG_LEVEL": "DEBUG",
        }
    )
    env.update(extra)
    return env


def manage(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    """Run ``manage.py`` in its own process against the test database."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerProcess:
    """``daphne project.asgi:application`` on 127.0.0.1, stopped and restarted at will."""

    def __init__(
        self,
        port: int | None = None,
        *,
        server: str = "daphne",
        extra_args: tuple[str, ...] = (),
        app: str = "project.asgi:application",
        **env: str,
    ) -> None:
        self.port = port or free_port()
        self.server = server
        self.app = app
        self.extra_args = extra_args  # appended to the server's command line
        self.env = env
        self.process: subprocess.Popen | None = None
        # Kept open for the life of the process, so not a context manager.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="server-", suffix=".log", delete=False
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/notifications/"

    def start(self, timeout: float = 20) -> ServerProcess:
        if self.server.startswith("uvicorn"):
            # "uvicorn" (--ws websockets) or "uvicorn-websockets-sansio"
            ws = self.server.partition("-")[2] or "websockets"
            command = [
                sys.executable, "-m", "uvicorn", self.app,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--ws", ws, "--ws-per-message-deflate", "false",
                # As the Dockerfile: the head deadline of docs/security.md.
                "--http", "notifications.realtime.uvicorn_http:HttpToolsProtocol",
                "--log-level", "warning",
            ]  # fmt: skip
        elif self.server == "runserver":
            # Daphne's runserver; without the autoreloader it runs in the main thread.
            command = [
                sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks",
                f"127.0.0.1:{self.port}",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                self.app,
            ]  # fmt: skip
        self.process = subprocess.Popen(
            [*command, *self.extra_args],
            cwd=ROOT,
            env=child_env(**self.env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not listen within {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
