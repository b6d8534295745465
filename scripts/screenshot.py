"""Take the README screenshots: the demo page with toasts and the bell, and the inbox.

Usage: .venv/bin/python scripts/screenshot.py   (needs Chromium at /usr/bin/chromium)
Runs its own server on a throw-away SQLite database; touches nothing else.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs"


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="screenshot-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "NOTIFICATIONS_LOG_LEVEL": "WARNING",
    }

    def manage(*args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)

    manage("migrate", "-v0")
    manage("shell", "-c", "from project.demo import ensure_demo_data; ensure_demo_data()")
    manage("notify", "--title", "Welcome to the demo", "--everyone")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "project.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            page.goto(base + "/accounts/login/?next=/")
            page.fill("#id_username", "demo")
            page.fill("#id_password", "demo")
            page.click("#login-form button")
            expect(page.locator("[data-notifications-state]")).to_have_attribute(
                "data-state", "open"
            )
            manage(
                "notify",
                "--title",
                "Invoice #1042 was paid",
                "--body",
                "€1,250.00 from ACME",
                "--level",
                "success",
                "--url",
                "/notifications/",
                "--user",
                "demo",
            )
            manage(
                "notify",
                "--title",
                "Deploy finished",
                "--body",
                "v2.3.1 is live",
                "--level",
                "info",
                "--user",
                "demo",
            )
            expect(page.locator(".nt-toast")).to_have_count(2, timeout=8000)
            page.screenshot(path=str(OUT / "screenshot.png"))
            page.goto(base + "/notifications/")
            expect(page.locator("[data-notifications-state]")).to_have_attribute(
                "data-state", "open"
            )
            page.screenshot(path=str(OUT / "screenshot-inbox.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"wrote {OUT / 'screenshot.png'} and {OUT / 'screenshot-inbox.png'}")


if __name__ == "__main__":
    main()
