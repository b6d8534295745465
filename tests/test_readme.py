"""README's "Add it to your own project", followed literally in a temporary folder.

Each step the README marks with ``<!-- readme-test: ACTION [PATH] -->`` right above a fenced
block is applied in order: ``run`` runs the block in bash (a ``cd`` carries over to the next
steps), ``append`` adds it to a file, ``write`` creates a file with it, ``serve`` starts the
block's command on a free port. Then a visitor is sent to sign in, the inbox renders, and the
notification the last step sends reaches an open socket.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from .server import ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]

STEP = re.compile(
    r"^(?P<indent>[ \t]*)<!-- readme-test: (?P<action>run|serve|append|write)"
    r"(?: (?P<path>\S+))? -->\n(?P=indent)```[^\n]*\n(?P<body>.*?)\n(?P=indent)```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)


def readme_steps() -> list[tuple[str, str | None, str]]:
    text = (ROOT / "README.md").read_text()
    return [(m["action"], m["path"], textwrap.dedent(m["body"])) for m in STEP.finditer(text)]


def clean_env() -> dict[str, str]:
    """The environment of a new user: none of this project's settings, this interpreter's
    tools (django-admin, python) first on PATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST", "DJANGO_", "DATABASE_URL", "REDIS_URL", "NOTIFICATIONS_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_the_readme_has_every_step():
    actions = [(action, path) for action, path, _ in readme_steps()]
    assert actions == [
        ("run", None),
        ("append", "mysite/settings.py"),
        ("write", "mysite/asgi.py"),
        ("write", "mysite/urls.py"),
        ("write", "templates/base.html"),
        ("write", "templates/registration/login.html"),
        ("run", None),
        ("serve", None),
        ("run", None),
    ]


class Visitor:
    """A browser-like HTTP client with cookies that follows redirects."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.origin + path, timeout=10) as response:
            return urllib.parse.urlsplit(response.url).path, response.read().decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[str, str]:
        data = urllib.parse.urlencode(fields).encode()
        with self.opener.open(self.origin + path, data=data, timeout=10) as response:
            return urllib.parse.urlsplit(response.url).path, response.read().decode()

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.cookies if c.name == name)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the server did not listen:\n{log.read_text()}")


def test_a_new_project_built_from_the_readme_serves_the_inbox_live(tmp_path):
    env = clean_env()
    cwd = tmp_path
    server: subprocess.Popen | None = None
    socket = None
    with contextlib.ExitStack() as opened:
        for action, path, body in readme_steps():
            if action == "run":
                where = tmp_path / ".cwd"
                result = subprocess.run(
                    ["bash", "-c", f"set -euo pipefail\n{body}\npwd > {shlex.quote(str(where))}"],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert result.returncode == 0, f"{body}\n{result.stdout}\n{result.stderr}"
                cwd = Path(where.read_text().strip())
            elif action == "append":
                with open(cwd / path, "a") as handle:
                    handle.write("\n" + body + "\n")
            elif action == "write":
                (cwd / path).parent.mkdir(parents=True, exist_ok=True)
                (cwd / path).write_text(body + "\n")
            else:  # serve: start it, sign in, open the inbox and a socket
                port = free_port()
                log = tmp_path / "server.log"
                server = subprocess.Popen(
                    [*shlex.split(body), f"127.0.0.1:{port}", "--noreload"],
                    cwd=cwd,
                    env=env,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                )
                opened.callback(stop, server)
                wait_for_port(port, server, log)
                socket = sign_in_and_connect(f"http://127.0.0.1:{port}", log, opened)
        assert socket is not None, "no serve step"
        frame = json.loads(socket.recv(timeout=10))
        assert (frame["type"], frame["title"], frame["replay"]) == (
            "notification",
            "Hello from the README",
            False,
        )


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def sign_in_and_connect(origin: str, log: Path, opened: contextlib.ExitStack):
    visitor = Visitor(origin)
    # Signed out, the inbox sends the visitor to a sign-in page that exists (no 404) ...
    landed, page = visitor.get("/notifications/")
    assert landed == "/accounts/login/", log.read_text()
    assert 'name="username"' in page
    # ... which signs in and comes back to the inbox, rendered in the project's base.html.
    landed, page = visitor.post(
        "/accounts/login/",
        {
            "username": "admin",
            "password": "change-me",
            "next": "/notifications/",
            "csrfmiddlewaretoken": visitor.cookie("csrftoken"),
        },
    )
    assert landed == "/notifications/", page[:2000]
    assert "<title>Inbox" in page and "data-notifications-badge" in page
    assert "notifications-config" in page  # the client's start state: live on this page
    socket = opened.enter_context(
        ws_connect(
            origin.replace("http", "ws") + "/ws/notifications/",
            origin=origin,
            additional_headers={"Cookie": f"sessionid={visitor.cookie('sessionid')}"},
            open_timeout=10,
        )
    )
    hello = json.loads(socket.recv(timeout=10))
    assert (hello["type"], hello["user"], hello["unread"]) == ("hello", "admin", 0)
    return socket
