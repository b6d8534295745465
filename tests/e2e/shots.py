"""Where browser tests save screenshots: docs/screenshots when NOTIFICATIONS_SCREENSHOTS=1
(to refresh the ones docs/client.md shows), else a temporary folder, so that a test run
leaves the work tree as it was."""

from __future__ import annotations

import os
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def screenshot_dir(tmp_path: Path) -> Path:
    return DOCS if os.environ.get("NOTIFICATIONS_SCREENSHOTS") == "1" else tmp_path
