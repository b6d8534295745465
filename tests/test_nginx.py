"""The SSE fallback and the WebSocket through deploy/nginx.conf (nginx in front of the real
server): the /sse/ location streams frames as they happen."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from notifications import notify

from .server import ROOT, ServerProcess, free_port
from .support import port_open, require_service, session_cookie

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(upstream_port: int, port: int, folder: Path) -> str:
    """deploy/nginx.conf as is, but pointed at the test server and listening on loopback."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = re.sub(r"server web\d+:8000;\n\s*", "", site, count=1)
    site = re.sub(r"server web\d+:8000;", f"server 127.0.0.1:{upstream_port};", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    temp = "\n".join(
        f"{name}_temp_path {folder / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{temp}\n{site}\n}}\n"
    )


@pytest.fixture
def nginx(transactional_db):
    require_service(
        "nginx", Path(NGINX).exists(), "needs nginx (apt-get install nginx, as .ci/run does)"
    )
    with ServerProcess() as server, tempfile.TemporaryDirectory() as folder:
        port = free_port()
        config = Path(folder) / "nginx.conf"
        config.write_text(nginx_config(server.port, port, Path(folder)))
        process = subprocess.Popen([NGINX, "-c", str(config), "-p", folder])
        try:
            for _ in range(100):
                if port_open("127.0.0.1", port):
                    break
                assert process.poll() is None, (Path(folder) / "error.log").read_text()
                time.sleep(0.05)  # nginx has no readiness signal but its port
            yield port
        finally:
            process.terminate()
            process.wait(10)


def test_event_stream_through_nginx(nginx, make_user):
    alice = make_user("alice")
    connection = http.client.HTTPConnection("127.0.0.1", nginx, timeout=10)
    try:
        connection.request(
            "GET",
            "/sse/notifications/?cursor=0",
            headers={"Cookie": session_cookie(alice), "Host": "127.0.0.1"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"

        def next_frame():
            while True:
                line = response.fp.readline().decode()
                assert line, "the stream ended"
                if line.startswith("data: "):
                    return json.loads(line[6:])

        assert next_frame()["type"] == "hello"
        assert next_frame() == {"type": "replayed", "count": 0, "complete": True}
        event = notify(alice, "through nginx")
        frame = next_frame()  # arrives now, not when a buffer fills
        assert (frame["type"], frame["id"]) == ("notification", event.id)
    finally:
        connection.close()
