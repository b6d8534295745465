"""Packaging: the wheel holds the app only (not the demo `project`), with its data files and an
SPDX license expression, built without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    # A copy of the checkout (the demo project included, so that leaving it out is the
    # build's doing): setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "__pycache__",
            "*.sqlite3*",
            "staticfiles",
            ".autobahn",
            "test-results",
            ".pytest_cache",
            ".ruff_cache",
            "node_modules",
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(out), "-v"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return path, build.stdout + build.stderr


def test_wheel_has_the_app_and_not_the_demo_project(wheel):
    path, _ = wheel
    names = zipfile.ZipFile(path).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"notifications", "django_live_notifications-0.1.0.dist-info"}, tops
    assert not [n for n in names if n.startswith(("project/", "templates/", "static/", "tests/"))]
    for needed in (
        "notifications/__init__.py",
        "notifications/templates/notifications/inbox.html",
        "notifications/static/notifications/notifications.js",
        "notifications/migrations/0001_initial.py",
        "notifications/migrations/0006_purge_watermark.py",
        "notifications/management/commands/purge_notifications.py",
    ):
        assert needed in names, needed


def test_wheel_metadata_has_an_spdx_license_and_the_build_is_quiet(wheel):
    path, output = wheel
    archive = zipfile.ZipFile(path)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    text = archive.read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert "prometheus-client" in text and "tqdm" in text
    assert "SetuptoolsDeprecationWarning" not in output
    assert "License classifiers are deprecated" not in output
    assert "project.table.license" not in output
